//! Bad and hostile pickles, built byte by byte.

use super::*;

fn run(bytes: &[u8]) -> Result<Value, String> {
    Machine::new(bytes).run()
}

#[test]
fn code_execution_through_reduce_is_refused_naming_the_global() {
    // pickle.dumps of an object whose __reduce__ returns (os.system, ("echo pwned",)), protocol 2.
    let mut p = b"\x80\x02cposix\nsystem\nq\x00X\x0a\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.".to_vec();
    let e = run(&p).unwrap_err();
    assert!(e.contains("global 'posix.system' is not allowed"), "{e}");
    p = b"\x80\x04\x95\x20\x00\x00\x00\x00\x00\x00\x00\x8c\x08builtins\x8c\x04eval\x93\x8c\x04ls()\x85R.".to_vec();
    let e = run(&p).unwrap_err();
    assert!(e.contains("global 'builtins.eval' is not allowed"), "{e}");
    let e = run(b"\x80\x02ctorch\nload\n.").unwrap_err();
    assert!(e.contains("global 'torch.load' is not allowed"), "{e}");
}

#[test]
fn other_opcodes_are_refused() {
    // INST ('i') and OBJ ('o') call classes too; NEWOBJ (0x81) builds arbitrary objects.
    for (p, op) in [(&b"(ios\nsystem\n."[..], "0x69"), (b"(o.", "0x6f"), (b"\x81.", "0x81")] {
        let e = run(p).unwrap_err();
        assert!(e.contains(&format!("opcode {op} at offset")), "{e}");
    }
}

#[test]
fn a_state_dict_of_one_tensor() {
    // {'w': _rebuild_tensor_v2(('storage', FloatStorage, '0', 'cpu', 6), 2, (2, 2), (2, 1), False, OrderedDict())}
    let p = b"\x80\x02}q\x00X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x06tQK\x02K\x02K\x02\x86K\x02K\x01\x86\x89ccollections\nOrderedDict\n)Rtq\x01Rs.";
    let Value::Dict(items, _) = run(p).unwrap() else { panic!("not a dict") };
    let Value::Tensor(t) = &items[0].1 else { panic!("not a tensor") };
    assert_eq!((t.storage.as_str(), t.dtype, t.offset, t.shape.clone()), ("0", FloatType::F32, 2, vec![2, 2]));
    assert_eq!(tensor_range(t, &(100..124)).unwrap(), 108..124);
    let e = tensor_range(t, &(100..120)).unwrap_err();
    assert!(e.contains("needs bytes 8..24 of a storage of 20 bytes"), "{e}");
    let transposed = Rebuilt { stride: vec![1, 2], ..t.clone() };
    assert!(tensor_range(&transposed, &(0..64)).unwrap_err().contains("not contiguous"));
}

#[test]
fn malformed_pickles_are_errors_not_panics() {
    let cases: &[(&[u8], &str)] = &[
        (b"", "truncated"),
        (b"\x80\x02X\xff\xff\xff\x7f", "exceeds"),
        (b"R.", "stack underflow"),
        (b"h\x05.", "memo key 5"),
        (b"\x8a\x09\x00", "wider than 64 bits"),
        (b"K\x00K\x01K\x02s.", "not a dict"),
        (b"ccollections\nOrderedDict\nK\x01\x85R.", "calling a global"),
    ];
    for (p, want) in cases {
        let e = run(p).unwrap_err();
        assert!(e.contains(want), "{p:?}: {e}");
    }
    let mut deep = vec![b'('; 40];
    deep.extend(std::iter::repeat_n(b't', 40));
    assert!(run(&deep).unwrap_err().contains("nested deeper"));
}

#[test]
fn memo_copies_cannot_grow_exponentially() {
    // l = [0]; then 40 times: l = [l, l] through the memo.
    let mut p = b"]q\x00K\x00a".to_vec();
    for _ in 0..40 {
        p.extend_from_slice(b"q\x00(h\x00h\x00tq\x00");
    }
    p.push(b'.');
    let e = run(&p).unwrap_err();
    assert!(e.contains("too many values") || e.contains("nested deeper"), "{e}");
}
