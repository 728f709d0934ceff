"""The slot layer on transformers' GPT-2 `Conv1D` (the ruGPT-3 / ruDialoGPT family, issue 22's
causal bases): the same mixed-batch parity with PEFT as on T5's Linear layers."""

from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D

from persona_serving.adapter_weights import read_adapter
from persona_serving.lora_layers import SlotLoRA, wrap_layers
from persona_serving.row_slots import RowSlots

CONFIG = GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=120, n_positions=32)


def gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(CONFIG).eval()


def test_conv1d_layers_are_wrapped_and_a_mixed_batch_matches_peft_per_adapter(tmp_path: Path):
    adapters = []
    for seed, (rank, targets) in enumerate([(4, ["c_attn"]), (16, ["c_attn", "c_proj", "c_fc"])]):
        torch.manual_seed(seed + 1)
        lora = LoraConfig(r=rank, lora_alpha=2 * rank + 3, target_modules=targets, fan_in_fan_out=True,
                          init_lora_weights=False)
        get_peft_model(gpt2(), lora).save_pretrained(tmp_path / f"a{seed}")
        adapters.append(tmp_path / f"a{seed}")
    model = gpt2()
    rows = RowSlots(torch.device("cpu"), grouped=True)
    layers = wrap_layers(model, rows, slots=3, max_rank=16)
    assert isinstance(model.transformer.h[0].attn.c_attn, SlotLoRA)
    assert isinstance(model.transformer.h[0].attn.c_attn.base_layer, Conv1D)
    for index, folder in enumerate(adapters):
        weights = read_adapter(folder, torch.float32, max_rank=16)
        for name, (a, b) in weights.layers.items():
            layers[name].check(a, b)
            layers[name].reserve(a.shape[0])
            layers[name].write(index, a, b)
    ids = torch.randint(0, CONFIG.vocab_size, (5, 7), generator=torch.Generator().manual_seed(3))
    slots = [2, 0, 1, 2, 1]
    rows.set(slots)
    with torch.inference_mode():
        mixed = model(ids).logits
        for slot, folder in [(1, adapters[0]), (2, adapters[1])]:
            mine = [i for i, s in enumerate(slots) if s == slot]
            expected = PeftModel.from_pretrained(gpt2(), folder).eval()(ids[mine]).logits
            assert (mixed[mine] - expected).abs().max().item() < 1e-4
        assert torch.equal(mixed[1], gpt2()(ids).logits[1])  # the row without an adapter: the bare base
