//! A decode step allocates nothing once warmed up: the KV cache, scratch buffers and kernel
//! workspaces are all allocated up front or reused.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Counts every allocation in the process, on every thread (kernels run on pool threads).
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn decode_steps_do_not_allocate() {
    exo_kernels::threads::set_threads(2).unwrap();
    let path = exo_models::models_dir().join("smollm2-135m-instruct.gguf");
    assert!(path.is_file(), "{} is missing: run scripts/fetch-models.sh all", path.display());
    let m = exo_models::load(&path, &exo_models::LoadOptions::default()).unwrap();
    let mut state = m.transformer.new_state(256, 64).unwrap();
    // Warm-up: prompt chunk and a few decode steps size every per-thread workspace; attention
    // scratch grows with the context, so warm up past the positions measured below.
    let prompt: Vec<u32> = (100..140).collect();
    m.transformer.forward(&mut state, &prompt, false).unwrap();
    for t in 0..100 {
        m.transformer.forward(&mut state, &[200 + t], false).unwrap();
    }
    state.truncate(prompt.len());
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    for t in 0..50 {
        m.transformer.forward(&mut state, &[300 + t], false).unwrap();
    }
    let n = ALLOCATIONS.load(Ordering::SeqCst) - before;
    assert_eq!(n, 0, "50 decode steps made {n} heap allocations");
}
