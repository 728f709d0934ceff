"""The slot layer against PEFT (issue 20): eight personas of different ranks, alphas and target
modules in ONE mixed batch answer exactly as each alone through an unmerged PeftModel - logits
within 1e-4 (fp32), greedy tokens identical, beams, return sequences and seeded sampling
row-consistent - on the tiny base and the FRED-shaped one; slots are reused cleanly; what
slots cannot express is refused at load, alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSeq2SeqLM

from persona_serving.decoding import decode_replies
from persona_serving.adapter_slots import DISK, HOST
from persona_serving.fleet import AdapterUnavailable, FleetModel
from personafleet.persona import PERSONA_FILE
from tests.fixtures.lora_adapters import make_adapter, publish_adapter

PROMPTS = ["что там с деплоем?", "как дела у команды?", "кто сегодня дежурит", "го обедать",
           "почему графана красная?", "перезапусти под", "когда релиз?", "привет"]
# name, rank, alpha, target modules ("FF" = the base's feed-forward layers), other LoraConfig settings
PERSONAS = [
    ("rank4-qv", 4, 8, ["q", "v"], {}),
    ("rank8-attention", 8, 16, ["q", "k", "v", "o"], {}),
    ("rank16-ff", 16, 8, ["FF"], {}),
    ("rank64-qv", 64, 128, ["q", "v"], {}),
    ("rank4-rslora", 4, 32, ["k", "o"], {"use_rslora": True}),
    ("rank8-patterns", 8, 4, ["q", "v", "o"], {"rank_pattern": {"v": 16}, "alpha_pattern": {"q": 64}}),
    ("rank16-everything", 16, 16, ["q", "k", "v", "o", "FF"], {}),
    ("rank64-ff-o", 64, 32, ["o", "FF"], {}),
]
NAMES = [name for name, *_ in PERSONAS]


@pytest.fixture(scope="module", params=["tiny", "fred"])
def bench(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A base (the tiny T5 or the FRED-shaped one), eight published personas and their PEFT references."""
    base = request.getfixturevalue(f"{request.param}_base")
    store = tmp_path_factory.mktemp(f"slots-{request.param}") / "store"
    references = {}
    for seed, (name, rank, alpha, targets, settings) in enumerate(PERSONAS):
        folder = publish_adapter(base, store, name, seed, rank, alpha, targets, **settings)
        references[name] = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(base), folder / "adapter").eval()
    return {"base": base, "store": store, "peft": references}


def fleet_of(bench: dict, kernel: str = "grouped", **settings) -> FleetModel:
    fleet = FleetModel(str(bench["base"]), torch.device("cpu"), torch.float32,
                       **({"max_resident_adapters": len(PERSONAS)} | settings))
    if kernel == "gather":
        for layer in fleet.slots.layers.values():
            layer.grouped = False
    return fleet


def mixed_rows(equal: bool = False) -> list[str]:
    """Rows of all eight personas, interleaved (not in slot order): two each, or 1, 2 or 3 each."""
    counts = [2] * len(NAMES) if equal else [1 + i % 3 for i in range(len(NAMES))]
    return [name for round_ in range(3) for name, count in zip(NAMES, counts) if count > round_]


def reference_generate(bench: dict, persona: str, prompts: list[str], tokenizer, options: dict, seed: int | None = None):
    if seed is not None:
        torch.manual_seed(seed)
    encoded = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        output = bench["peft"][persona].generate(**encoded, **options, pad_token_id=tokenizer.pad_token_id)
    return decode_replies(tokenizer, output[:, 1:])


@pytest.mark.parametrize(("kernel", "equal"), [("grouped", False), ("gather", False), ("views", True)])
@pytest.mark.parametrize("in_slot_order", [False, True])
def test_a_mixed_batch_gives_each_row_its_personas_peft_logits(bench: dict, kernel: str, equal: bool,
                                                               in_slot_order: bool):
    """Each of the mixed-batch kernels: a grouped GEMM, the gather reference, and batched
    matmuls over views when every persona has as many rows."""
    fleet = fleet_of(bench, kernel)
    entries = {name: fleet.load(bench["store"], name, 1) for name in NAMES}
    rows = sorted(mixed_rows(equal), key=NAMES.index) if in_slot_order else mixed_rows(equal)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(rows))]
    encoded = fleet.tokenizer(prompts, return_tensors="pt", padding=True)
    decoder = torch.randint(3, fleet.tokenizer.vocab_size, (len(rows), 5), generator=torch.Generator().manual_seed(0))
    fleet.set_row_slots([fleet.slot(entries[name]) for name in rows])
    with torch.inference_mode():
        logits = fleet.model(**encoded, decoder_input_ids=decoder).logits
    for name in NAMES:
        mine = [i for i, row in enumerate(rows) if row == name]
        with torch.inference_mode():
            expected = bench["peft"][name](input_ids=encoded.input_ids[mine], attention_mask=encoded.attention_mask[mine],
                                           decoder_input_ids=decoder[mine]).logits
        assert (logits[mine] - expected).abs().max().item() < 1e-4, name


def test_rows_without_an_adapter_get_the_bare_bases_logits(bench: dict):
    fleet = fleet_of(bench)
    entry = fleet.load(bench["store"], NAMES[6], 1)
    base = AutoModelForSeq2SeqLM.from_pretrained(bench["base"]).eval()
    encoded = fleet.tokenizer(PROMPTS[:4], return_tensors="pt", padding=True)
    decoder = torch.zeros((4, 1), dtype=torch.long)
    fleet.set_row_slots([0, fleet.slot(entry), 0, fleet.slot(entry)])
    with torch.inference_mode():
        logits = fleet.model(**encoded, decoder_input_ids=decoder).logits
        bare = base(**encoded, decoder_input_ids=decoder).logits
        adapted = bench["peft"][NAMES[6]](**encoded, decoder_input_ids=decoder).logits
    assert torch.equal(logits[[0, 2]], bare[[0, 2]])
    assert (logits[[1, 3]] - adapted[[1, 3]]).abs().max().item() < 1e-4


def test_greedy_replies_of_a_mixed_batch_are_each_personas_own(bench: dict):
    fleet = fleet_of(bench)
    entries = {name: fleet.load(bench["store"], name, 1) for name in NAMES}
    rows = mixed_rows()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(rows))]
    greedy = {"max_new_tokens": 10, "do_sample": False}
    mixed, _ = fleet.generate(prompts, [entries[name] for name in rows], greedy)
    for name in NAMES:
        mine = [i for i, row in enumerate(rows) if row == name]
        alone = reference_generate(bench, name, [prompts[i] for i in mine], fleet.tokenizer, greedy)
        assert [mixed[i] for i in mine] == alone, name
    assert len(set(mixed)) > len(NAMES) // 2, "the adapters must answer differently"


@pytest.mark.parametrize("options", [
    {"max_new_tokens": 8, "num_beams": 3, "num_return_sequences": 2, "do_sample": False},
    {"max_new_tokens": 8, "do_sample": True, "top_k": 20, "num_return_sequences": 2},
], ids=["beams", "sampling"])
def test_beams_return_sequences_and_seeded_sampling_follow_the_rows(bench: dict, options: dict):
    """Every row of a mixed batch equals that row of the same batch run with its persona on every
    row (PEFT, same seed): the slot index follows the rows through beams, expanded return
    sequences and the sampler's per-row draws."""
    fleet = fleet_of(bench)
    entries = {name: fleet.load(bench["store"], name, 1) for name in NAMES}
    rows = mixed_rows()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(rows))]
    torch.manual_seed(11)
    mixed, _ = fleet.generate(prompts, [entries[name] for name in rows], options)
    per = options["num_return_sequences"]
    assert len(mixed) == per * len(rows)
    for name in NAMES[::3]:  # every third persona keeps the test fast; the logits test covers all
        alone = reference_generate(bench, name, prompts, fleet.tokenizer, options, seed=11)
        for i, row in enumerate(rows):
            if row == name:
                assert mixed[i * per:(i + 1) * per] == alone[i * per:(i + 1) * per], (name, i)


def test_a_reused_slot_answers_exactly_like_its_new_adapter(bench: dict):
    """Slots are reused, never rebuilt: a rank-4 q,v adapter written over the slot of a rank-64
    adapter with more targets leaves nothing of the old one behind; eviction frees the slot."""
    fleet = fleet_of(bench, max_resident_adapters=1)  # two physical slots: one resident + the spare
    wide = fleet.load(bench["store"], "rank16-everything", 1)
    wider = fleet.load(bench["store"], "rank64-ff-o", 1)
    assert {fleet.slot(wide), fleet.slot(wider)} == {1, 2}
    with pytest.raises(AdapterUnavailable, match="no free slot"):
        fleet.load(bench["store"], "rank4-qv", 1)
    fleet.unload(wider)
    narrow = fleet.load(bench["store"], "rank4-qv", 1)
    assert fleet.slot(narrow) == 2 and fleet.slots_in_use == 2
    prompts = PROMPTS[:4]
    greedy = {"max_new_tokens": 10, "do_sample": False}
    assert fleet.generate(prompts, [narrow] * 4, greedy)[0] == reference_generate(bench, "rank4-qv", prompts, fleet.tokenizer, greedy)
    fleet.unload(wide)
    again = fleet.load(bench["store"], "rank16-everything", 1)
    assert fleet.slot(again) == 1
    got, _ = fleet.generate(prompts, [again, narrow, again, narrow], greedy)
    assert got[0::2] == reference_generate(bench, "rank16-everything", prompts[0::2], fleet.tokenizer, greedy)
    assert got[1::2] == reference_generate(bench, "rank4-qv", prompts[1::2], fleet.tokenizer, greedy)


def test_the_host_tier_serves_a_reload_without_the_disk(bench: dict, tmp_path: Path):
    loads: list[str] = []
    fleet = fleet_of(bench, max_resident_adapters=1, max_host_adapters=1, on_slot_load=lambda tier, _: loads.append(tier))
    store = tmp_path / "store"
    shutil.copytree(bench["store"], store)
    first = fleet.load(store, "rank8-patterns", 1)
    greedy = {"max_new_tokens": 8, "do_sample": False}
    before, _ = fleet.generate(PROMPTS[:2], [first] * 2, greedy)
    fleet.unload(first)
    (store / "rank8-patterns" / "v1" / "adapter" / "adapter_model.safetensors").unlink()  # only the host copy is left
    again = fleet.load(store, "rank8-patterns", 1)
    assert fleet.generate(PROMPTS[:2], [again] * 2, greedy)[0] == before
    assert loads == [DISK, HOST]
    fleet.unload(again)
    fleet.load(store, "rank4-qv", 1)  # the host tier holds one adapter: this one pushes the other out
    assert len(fleet.slots.host) == 1 and loads[-1] == DISK
    with pytest.raises(AdapterUnavailable, match="unreadable"):
        fleet.load(store, "rank8-patterns", 1)


def test_each_mix_takes_its_fast_path(bench: dict, monkeypatch: pytest.MonkeyPatch):
    """One adapter (rows without one skipped): plain matmuls; as many rows per adapter: batched
    matmuls over views; any other mix: the grouped GEMM."""
    fleet = fleet_of(bench)
    one, other = fleet.load(bench["store"], NAMES[0], 1), fleet.load(bench["store"], NAMES[3], 1)
    calls = {"grouped": 0, "bmm": 0}
    grouped, bmm = torch._grouped_mm, torch.bmm

    def counting(kind, function):
        return lambda *args, **kwargs: calls.__setitem__(kind, calls[kind] + 1) or function(*args, **kwargs)

    monkeypatch.setattr(torch, "_grouped_mm", counting("grouped", grouped))
    monkeypatch.setattr(torch, "bmm", counting("bmm", bmm))
    greedy = {"max_new_tokens": 3, "do_sample": False}
    fleet.generate(PROMPTS[:4], [None, one, None, one], greedy)
    assert calls == {"grouped": 0, "bmm": 0}
    fleet.generate(PROMPTS[:4], [one, other, one, other], greedy)
    assert calls["grouped"] == 0 and calls["bmm"] > 0
    fleet.generate(PROMPTS[:4], [one, other, other, other], greedy)
    assert calls["grouped"] > 0


# --- refusals: what slots cannot express is refused at load, that version alone ------------------
def edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter" / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.mark.parametrize(("make", "reason"), [
    (lambda base, out: make_adapter(base, out, 1, 8, 16, ["q", "v"], use_dora=True), "DoRA"),
    (lambda base, out: make_adapter(base, out, 1, 8, 16, ["q", "v"], bias="lora_only"), "trains biases"),
    (lambda base, out: make_adapter(base, out, 1, 8, 16, ["shared"]), "LoRA on an embedding"),
    (lambda base, out: make_adapter(base, out, 1, 8, 16, ["q"], modules_to_save=["lm_head"]), "modules_to_save"),
    (lambda base, out: make_adapter(base, out, 1, 32, 16, ["q", "v"]), "rank 32 is above the fleet's maxLoraRank 16"),
], ids=["dora", "bias", "embedding", "modules-to-save", "rank"])
def test_what_slots_cannot_express_is_refused_at_load_and_the_others_keep_serving(
        bench: dict, tmp_path: Path, make, reason: str):
    fleet = fleet_of(bench, max_lora_rank=16)
    served = fleet.load(bench["store"], "rank4-qv", 1)
    before, _ = fleet.generate(PROMPTS[:2], [served] * 2, {"max_new_tokens": 6, "do_sample": False})
    store = tmp_path / "store"
    run = make(bench["base"], tmp_path / "odd")
    shutil.copytree(run, store / "odd" / "v1" / "adapter")
    shutil.copy(run / PERSONA_FILE, store / "odd" / "v1" / PERSONA_FILE)
    (store / "odd" / "v1" / "version.json").write_text(json.dumps({"persona": "odd", "version": 1, "base": "x"}))
    with pytest.raises(AdapterUnavailable, match=reason):
        fleet.load(store, "odd", 1)
    assert fleet.slots_in_use == 1
    assert fleet.generate(PROMPTS[:2], [served] * 2, {"max_new_tokens": 6, "do_sample": False})[0] == before


def test_target_modules_the_base_lacks_and_misfit_shapes_are_refused(bench: dict, tiny_base: Path, fred_base: Path,
                                                                     tmp_path: Path):
    fleet = fleet_of(bench, max_resident_adapters=1)
    store = tmp_path / "store"
    other = fred_base if bench["base"] == tiny_base else tiny_base
    publish_adapter(other, store, "elsewhere", 1, 8, 8, ["FF"])  # the other base's feed-forward layers
    with pytest.raises(AdapterUnavailable, match="the base has no such layer"):
        fleet.load(store, "elsewhere", 1)
    shutil.copytree(bench["store"] / "rank4-qv" / "v1", store / "misfit" / "v1")
    weights = store / "misfit" / "v1" / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = next(k for k in sorted(tensors) if k.endswith("lora_A.weight"))
    tensors[key] = tensors[key][:, :-1].contiguous()  # one input feature short
    save_file(tensors, weights)
    (store / "misfit" / "v1" / "version.json").write_text(json.dumps({"persona": "misfit", "version": 1, "base": "x"}))
    with pytest.raises(AdapterUnavailable, match="do not fit"):
        fleet.load(store, "misfit", 1)
    assert fleet.slots_in_use == 0
    fleet.load(bench["store"], NAMES[0], 1)
    fleet.load(bench["store"], NAMES[1], 1)  # both slots (resident + spare) are still free


def test_16_bit_slots_pad_ranks_for_the_grouped_kernel_and_agree_with_fp32(bench: dict):
    """The dtype the GPU serves in (bf16), run on CPU: rank-4 adapters sit in tables padded with
    zeros to 8 (16 bytes, what torch's grouped GEMM needs) and agree with the fp32 slots."""
    rows = ["rank4-qv", "rank4-rslora", "rank4-rslora", "rank4-qv", "rank4-rslora"]  # unequal: the grouped GEMM
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        fleet = FleetModel(str(bench["base"]), torch.device("cpu"), dtype, max_resident_adapters=2)
        entries = {name: fleet.load(bench["store"], name, 1) for name in set(rows)}
        encoded = fleet.tokenizer(PROMPTS[:len(rows)], return_tensors="pt", padding=True)
        fleet.set_row_slots([fleet.slot(entries[name]) for name in rows])
        with torch.inference_mode():
            results[dtype] = fleet.model(**encoded, decoder_input_ids=torch.zeros((len(rows), 1), dtype=torch.long)).logits
        widths = {layer.width for layer in fleet.slots.layers.values()} - {0}
    assert widths == {8} and fleet.slots.rows.grouped
    error = (results[torch.bfloat16].float() - results[torch.float32]).norm() / results[torch.float32].norm()
    assert error < 0.02  # bf16's rounding through the whole model; a wrong slot or scale is far off
