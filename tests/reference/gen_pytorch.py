"""PyTorch checkpoints written by torch.save, with the same tensors as safetensors for reference.

Writes under tests/fixtures/:

  pytorch-tiny-llama/   config.json and pytorch_model.bin: torch.save(model.state_dict()) of a
                        tiny random LlamaForCausalLM (vocab 512, hidden 16, 2 layers) in bfloat16
                        with tied embeddings (lm_head.weight and model.embed_tokens.weight share
                        one storage in the pickle); reference.safetensors: the same state dict
                        saved by safetensors.torch (clones, since safetensors refuses shared
                        storage); logits.json: transformers' float32 logits for 8 ids.
  pytorch-views/        config.json ({}) and pytorch_model.bin holding tensors that are views at a
                        non-zero offset of a larger storage, f16/f32/int64 dtypes, a 0-d scalar and
                        an nn.Parameter; reference.safetensors with contiguous copies.

exo reads both with its restricted unpickler and must find identical dtypes, shapes and bytes.
"""

import json

import numpy as np

from _common import FIXTURES, f32, write_json

IDS = [1, 17, 230, 5, 511, 42, 99, 300]


def tiny_llama(out):
    import torch
    import transformers
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=512, hidden_size=16, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=1, eos_token_id=2,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape) * (0.2 if "norm" in name else 0.5) + (1.0 if "norm" in name else 0.0))
    model = model.to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    cfg.dtype = "bfloat16"
    (out / "config.json").write_text(cfg.to_json_string())
    state = model.state_dict()
    assert state["lm_head.weight"].data_ptr() == state["model.embed_tokens.weight"].data_ptr()
    torch.save(state, out / "pytorch_model.bin")
    save_file({k: v.clone().contiguous() for k, v in state.items()}, out / "reference.safetensors")
    with torch.no_grad():
        logits = model.float()(torch.tensor([IDS])).logits[0].numpy()
    write_json(out / "logits.json", {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "ids": IDS,
        "logits": [[f32(x) for x in row] for row in logits],
    })


def views(out):
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1)
    big = torch.randn(10, 6)
    state = {
        "rows": big[3:7],  # offset 18 elements into big's storage
        "whole": big,
        "half": torch.randn(3, 5).half(),
        "ints": torch.arange(-3, 9, dtype=torch.int64).reshape(3, 4),
        "scalar": torch.tensor(2.5),
        "param": torch.nn.Parameter(torch.randn(4)),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text("{}\n")
    torch.save(state, out / "pytorch_model.bin")
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, out / "reference.safetensors")
    print(f"wrote {out}")


def main():
    tiny_llama(FIXTURES / "pytorch-tiny-llama")
    views(FIXTURES / "pytorch-views")


if __name__ == "__main__":
    main()
