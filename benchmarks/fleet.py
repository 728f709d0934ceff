#!/usr/bin/env python3
"""The fleet's costs and gains, in one run: a table on stdout, `benchmarks/results/fleet.{json,png}`.

1. Sweep (issue 20): requests/s of one batch of `--batch` rows (48 input tokens, 32 new tokens,
   greedy, fixed length) whose rows use k distinct LoRA adapters, k = 1 .. 32, on T5-base- and
   FRED-T5-large-shaped bases with random weights (adapters r=16 on q,v, `persona train`'s
   defaults, written in PEFT's format), at 1 and 2 threads. Three setups share the base weights:
   the slot layer (the fleet's path), PEFT's mixed batch (`generate(adapter_names=...)`, the path
   it replaces) and one merged model (no LoRA at all: the old one-model-per-persona layout, the
   ceiling). Setups alternate within each repeat; the best of the repeats counts.
   With `--device cuda` (bf16): the same at `--batch 32 64`, plus the decode step time of k=32
   against the bandwidth floor (base bytes / `--bandwidth-gbs`).
2. Slots at FRED-T5-large shape: cold load disk -> slot p50/p99 (the files were just written, so
   the page cache holds them), host tier -> slot, and the slot tables' bytes per resident adapter
   against the adapter's own bytes.
3. Serving (tiny T5, a real TorchServe): 16 concurrent clients over 8 personas vs the same on one
   persona (one worker), vs one model per persona (the old layout); a routing switch -> the new
   version answering.
4. Two bases in one `persona serve` (issue 22): a tiny T5 and a tiny causal (Llama) base, 2
   personas each, `--clients` clients over the 4 personas (half per base) through the routing
   front; each fleet's req/s against the same clients on a server with that base alone, each
   server with `persona serve`'s own threads (the cores shared among the fleets it serves).

    flock /work/heavy.lock .venv/bin/python benchmarks/fleet.py        # everything (an hour and more on 2 cores)
    .venv/bin/python benchmarks/fleet.py --parts sweep --shapes t5-base --threads 2 --repeats 1
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import itertools
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MESSAGES = ["привет, как дела?", "деплой опять упал", "кто сегодня дежурит?", "перезапусти под пожалуйста",
            "что с мониторингом?", "когда релиз?", "почему графана красная?", "го обедать"]
logger = logging.getLogger("fleet-benchmark")

# T5Config settings of the bases (random weights). fred-large: FRED-T5-large's architecture.
SHAPES = {
    "t5-small": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8,
                     vocab_size=32128, feed_forward_proj="relu", tie_word_embeddings=True),
    "t5-base": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12,
                    vocab_size=32128, feed_forward_proj="relu", tie_word_embeddings=True),
    "fred-large": dict(d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_decoder_layers=24, num_heads=16,
                       vocab_size=50364, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}
TARGETS = ["q", "v"]  # `persona train`'s default target modules


# --- the setups -------------------------------------------------------------------------------
def base_model(shape: str, device, dtype):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(**SHAPES[shape], decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(config).to(device, dtype).eval()


def sharing_weights(model):
    """Another module tree over the same parameter and buffer tensors (no copy of the weights)."""
    import torch

    memo = {id(t): t for t in itertools.chain(model.parameters(), model.buffers()) if isinstance(t, torch.Tensor)}
    return copy.deepcopy(model, memo)


def write_adapters(model, count: int, rank: int, folder: Path) -> list[Path]:
    """`count` random adapters (A and B both random) saved by PEFT, as `persona train` saves them."""
    import torch
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(sharing_weights(model), LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS,
                                                             task_type="SEQ_2_SEQ_LM"))
    paths = []
    for index in range(count):
        generator = torch.Generator().manual_seed(index + 1)
        with torch.no_grad():
            for name, parameter in peft.named_parameters():
                if "lora_" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
        peft.save_pretrained(folder / f"a{index}")
        paths.append(folder / f"a{index}")
    return paths


class Setups:
    """The merged model (the base itself: merging a LoRA costs nothing at inference), the slot
    layer and PEFT's mixed batch, all over one copy of the base weights."""

    def __init__(self, shape: str, device, dtype, adapters: int, rank: int, work: Path):
        from peft import PeftModel

        from persona_serving.adapter_slots import AdapterSlots

        self.merged = base_model(shape, device, dtype)
        self.base_bytes = sum(p.numel() * p.element_size() for p in self.merged.parameters())
        paths = write_adapters(self.merged, adapters, rank, work / shape)
        self.load_seconds: list[float] = []
        self.slots = AdapterSlots(sharing_weights(self.merged), capacity=adapters, max_rank=rank,
                                  on_load=lambda tier, seconds: self.load_seconds.append(seconds))
        for index, path in enumerate(paths):
            self.slots.fill(index, path)
        self.peft = PeftModel.from_pretrained(sharing_weights(self.merged), str(paths[0]), adapter_name="a0").eval()
        for index, path in enumerate(paths[1:], 1):
            self.peft.load_adapter(str(path), adapter_name=f"a{index}")
        self.paths = paths

    def generate(self, setup: str, ids, adapters: list[int], new_tokens: int) -> tuple[float, float]:
        """(wall, CPU) seconds of one greedy `generate` of exactly `new_tokens` tokens; row i uses
        adapter adapters[i]. The process's CPU time is the steadier figure on a shared machine."""
        import torch

        options = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, num_beams=1)
        if setup == "slots":
            model = self.slots.model
            self.slots.set_rows([self.slots.slot(a) for a in adapters])
        elif setup == "peft":
            model, options["adapter_names"] = self.peft, [f"a{a}" for a in adapters]
        else:
            model = self.merged
        with torch.inference_mode():
            started, cpu = time.perf_counter(), time.process_time()
            model.generate(**options)
            if ids.device.type == "cuda":
                torch.cuda.synchronize()
            return time.perf_counter() - started, time.process_time() - cpu


def mix(batch: int, k: int) -> list[int]:
    """k distinct adapters over `batch` rows, in slot order (as the handler orders a batch)."""
    return [row * k // batch for row in range(batch)]


# --- 1. sweep ---------------------------------------------------------------------------------
def sweep(work: Path, args: argparse.Namespace) -> dict:
    import torch

    device, dtype = torch.device(args.device), torch.bfloat16 if args.device == "cuda" else torch.float32
    report: dict = {}
    for shape in args.shapes:
        logger.info("sweep: %s base, %d adapters r=%d", shape, max(args.ks), args.rank)
        setups = Setups(shape, device, dtype, max(args.ks), args.rank, work)
        generator = torch.Generator().manual_seed(0)
        runs: dict[str, list[float]] = {}
        for repeat, threads, batch in itertools.product(range(args.repeats), args.threads, args.batch):
            torch.set_num_threads(threads)
            ids = torch.randint(2, setups.merged.config.vocab_size, (batch, args.input_tokens), generator=generator).to(device)
            for setup, k in [("merged", 1), *((s, k) for k in args.ks for s in ("slots", "peft"))]:
                if repeat == 0:
                    setups.generate(setup, ids[:, :8], mix(batch, k), 2)  # warm-up
                wall, cpu = setups.generate(setup, ids, mix(batch, k), args.new_tokens)
                runs.setdefault(f"{setup}|{threads}|{batch}|{k}", []).append(wall)
                runs.setdefault(f"{setup}|{threads}|{batch}|{k}|cpu", []).append(cpu)
                logger.info("%s threads=%d batch=%d %s k=%d: %.2f s (CPU %.2f s)", shape, threads, batch, setup, k, wall, cpu)
        table = []
        for threads, batch in itertools.product(args.threads, args.batch):
            def rate(setup: str, k: int, clock: str = "") -> float:
                return batch / min(runs[f"{setup}|{threads}|{batch}|{k}{clock}"])

            for k in args.ks:
                slots, peft, merged = rate("slots", k), rate("peft", k), rate("merged", 1)
                table.append({"threads": threads, "batch": batch, "k": k, "slots_rps": slots, "peft_rps": peft,
                              "merged_rps": merged, "slots_vs_merged": slots / merged, "slots_vs_peft": slots / peft,
                              "cpu_slots_vs_merged": rate("slots", k, "|cpu") / rate("merged", 1, "|cpu"),
                              "cpu_slots_vs_peft": rate("slots", k, "|cpu") / rate("peft", k, "|cpu")})
        report[shape] = {"table": table, "runs": runs, "base_bytes": setups.base_bytes}
        if device.type == "cuda":
            report[shape]["decode_step"] = decode_steps(setups, args)
        if shape == args.slots_shape and "slots" in args.parts:
            report[shape]["slots"] = slot_costs(setups, work)
        del setups
    return report


def decode_steps(setups: Setups, args: argparse.Namespace) -> dict:
    """Seconds per decoding step (the difference of a long and a one-token generate) of the
    merged model and of the slot layer at the widest mix, against the bandwidth floor."""
    import torch

    steps = {}
    for batch in args.batch:
        ids = torch.randint(2, 1000, (batch, args.input_tokens)).to(args.device)
        for setup, k in (("merged", 1), ("slots", max(args.ks)), ("peft", max(args.ks))):
            long = min(setups.generate(setup, ids, mix(batch, k), args.new_tokens)[0] for _ in range(args.repeats))
            short = min(setups.generate(setup, ids, mix(batch, k), 1)[0] for _ in range(args.repeats))
            steps[f"{setup}|{batch}"] = (long - short) / (args.new_tokens - 1)
    floor = setups.base_bytes / (args.bandwidth_gbs * 1e9) if args.bandwidth_gbs else None
    return {"seconds": steps, "bandwidth_floor_s": floor}


# --- 2. slots ---------------------------------------------------------------------------------
def slot_costs(setups: Setups, work: Path) -> dict:
    """Cold loads (disk -> slot) measured while filling the sweep's slots, a host tier's loads,
    and the tables' bytes per resident adapter against the adapter's own bytes."""
    from persona_serving.adapter_slots import HOST, AdapterSlots
    from persona_serving.adapter_weights import read_adapter

    raw = read_adapter(setups.paths[0], setups.slots.dtype, setups.slots.max_rank).nbytes
    host_loads: list[float] = []
    hosted = AdapterSlots(sharing_weights(setups.merged), capacity=1, max_rank=setups.slots.max_rank, host_capacity=2,
                          on_load=lambda tier, seconds: host_loads.append(seconds) if tier == HOST else None)
    for index in range(16):
        hosted.fill("a", setups.paths[index % 2])
        hosted.free("a")
    disk = sorted(setups.load_seconds)
    return {
        "adapters": len(setups.slots), "adapter_bytes": raw, "table_bytes": setups.slots.nbytes,
        "bytes_per_resident_vs_raw": setups.slots.nbytes / (len(setups.slots) * raw),
        "disk_load_p50_s": statistics.median(disk), "disk_load_p99_s": disk[round(0.99 * (len(disk) - 1))],
        "host_load_p50_s": statistics.median(host_loads), "host_device": str(setups.slots.device),
    }


# --- 3. serving: throughput and rollout --------------------------------------------------------
def tiny_fleet(work: Path, personas: list[str], shape: str = "t5", store: Path | None = None,
               second_version: bool = True) -> tuple[Path, Path]:
    """A tiny base of `shape` (t5, or llama: causal) and one random LoRA adapter per persona
    (PEFT's default modules for it), published as v1 (and v2 of the first)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, GenerationConfig

    from persona_training.base_model import DEFAULT_CORPUS, BaseModelOptions, init_base
    from persona_training.package import publish_version
    from personafleet.family import load_base, load_family
    from personafleet.persona import PERSONA_FILE, PersonaSpec

    base = work / f"base-{shape}"
    init_base(base, [ROOT / DEFAULT_CORPUS],
              BaseModelOptions(shape=shape, d_model=128, d_ff=256, num_layers=2, num_heads=4, steps=5))
    generation = GenerationConfig.from_pretrained(base)
    generation.eos_token_id = None  # fixed reply length: every setup generates the same tokens
    generation.save_pretrained(base)
    family = load_family(str(base))
    store = store or work / "store"
    tokenizer = AutoTokenizer.from_pretrained(base)
    for index, name in enumerate(personas):
        torch.manual_seed(index)
        run = work / "runs" / name
        lora = LoraConfig(r=16, lora_alpha=32, init_lora_weights=False, task_type=family.peft_task_type)
        model = get_peft_model(load_base(family, str(base)), lora)  # target modules: PEFT's default for the type
        model.save_pretrained(str(run))
        tokenizer.save_pretrained(str(run))
        template = family.default_template(tokenizer)
        (run / PERSONA_FILE).write_text(PersonaSpec(name=name, template=template).model_dump_json(), encoding="utf-8")
        publish_version(run, name, 1, store / name / "v1")
        if index == 0 and second_version:
            publish_version(run, name, 2, store / name / "v2")
    return base, store


def request_body(persona: str, index: int, new_tokens: int) -> dict:
    return {"persona": persona, "message": MESSAGES[index % len(MESSAGES)],
            "generation": {"max_new_tokens": new_tokens, "do_sample": False, "num_beams": 1}}


async def load(url_for, headers: dict, clients: list[str], per_client: int, new_tokens: int) -> dict:
    """One client per entry of `clients` (its persona), each sending requests back to back."""
    errors = 0
    latencies: list[float] = []

    async def client(offset: int, persona: str, http: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in range(per_client):
            started = time.perf_counter()
            response = await http.post(url_for(persona), json=request_body(persona, offset + i, new_tokens), headers=headers)
            if response.status_code != 200:
                errors += 1
            latencies.append(time.perf_counter() - started)

    async with httpx.AsyncClient(timeout=600) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(n, persona, http) for n, persona in enumerate(clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {"requests": len(latencies), "errors": errors, "req_per_s": len(latencies) / elapsed,
            "p50_s": statistics.median(latencies), "p99_s": latencies[int(0.99 * (len(latencies) - 1))]}


async def rollout_seconds(options, persona: str) -> float:
    """Routing table switched to v2 -> the first unpinned answer from v2."""
    from personafleet.client import InferenceClient
    from personafleet.inference import InferenceRequest
    from personafleet.routing import update_routing

    async with InferenceClient(options.inference_url, token_file=options.inference_token_file, retries=0) as client:
        request = InferenceRequest(message="привет", generation={"max_new_tokens": 2})
        await client.reply(persona, request)
        started = time.perf_counter()
        update_routing(options.model_store, lambda table: table.add(persona, 2, serve=True))
        while (await client.reply(persona, request)).model_version != "2":
            pass
        return time.perf_counter() - started


def serving(work: Path, args: argparse.Namespace) -> dict:
    from persona_serving.archive import ArchiveOptions, build_fleet_archive
    from persona_serving.server import ServeOptions, fleet_config, free_port, serve_background, start, stop, wait_until_served
    from personafleet.client import TokenSource

    personas = [f"persona-{i}" for i in range(8)]
    base, store = tiny_fleet(work, personas)
    archive = ArchiveOptions(batch_size=16, max_batch_delay_ms=args.max_batch_delay_ms, response_timeout_s=600)
    options = ServeOptions(model_store=store, bases=[str(base)], workdir=work / "serve", archive=archive,
                           max_resident_adapters=len(personas), inference_port=free_port(), management_port=free_port(),
                           metrics_port=free_port(), grpc_ports=(free_port(), free_port()), torch_threads=args.serving_threads)
    serve_background(options)
    results: dict = {}
    try:
        headers = TokenSource(token_file=options.inference_token_file).headers()
        fleet_url = lambda persona: f"{options.inference_url}/predictions/fleet"  # noqa: E731
        spread = [personas[i % len(personas)] for i in range(args.clients)]
        same = [personas[0]] * args.clients
        for label, clients in [("fleet, 8 personas", spread), ("fleet, 1 persona", same)]:
            asyncio.run(load(fleet_url, headers, clients, 2, args.serving_new_tokens))  # warm-up: adapters resident
            logger.info("throughput: %s", label)
            results[label] = asyncio.run(load(fleet_url, headers, clients, args.requests_per_client, args.serving_new_tokens))
        results["rollout_s"] = asyncio.run(rollout_seconds(options, personas[0]))
    finally:
        stop(options.workdir)

    # Today's layout: one model (one worker, one copy of the base) per persona, on the same cores,
    # loaded at start by a second server (the model API is off: nothing registers later).
    single = ArchiveOptions(batch_size=16, max_batch_delay_ms=args.max_batch_delay_ms, response_timeout_s=600)
    config = fleet_config(options, str(base)).model_copy(update={"max_resident_adapters": 1})
    per_persona = options.model_copy(update={"workdir": work / "serve-per-persona"})
    models = [f"model-{persona}" for persona in personas]
    for name in models:
        build_fleet_archive(per_persona.links, config, options=single, name=name)
    pid = start(per_persona, models)
    try:
        asyncio.run(wait_until_served(per_persona, pid, models))
        headers = TokenSource(token_file=per_persona.inference_token_file).headers()
        per_model_url = lambda persona: f"{per_persona.inference_url}/predictions/model-{persona}"  # noqa: E731
        asyncio.run(load(per_model_url, headers, spread, 2, args.serving_new_tokens))
        logger.info("throughput: one model per persona")
        results["one model per persona, 8 personas"] = asyncio.run(
            load(per_model_url, headers, spread, args.requests_per_client, args.serving_new_tokens))
    finally:
        stop(per_persona.workdir)
    return results


# --- 4. two bases in one `persona serve` (issue 22) --------------------------------------------
def two_bases(work: Path, args: argparse.Namespace) -> dict:
    """A tiny T5 and a tiny causal (Llama) base, 2 personas each, in ONE `persona serve` (one fleet
    model per base, the routing front before them): `--clients` clients over the 4 personas, and
    each fleet's req/s against the same clients of that fleet on a server with that base alone."""
    from persona_serving.archive import ArchiveOptions
    from persona_serving.server import ServeOptions, free_port, serve_background, stop
    from personafleet.client import TokenSource

    groups = {"t5": ["t5-a", "t5-b"], "llama": ["causal-a", "causal-b"]}
    bases = {}
    store = work / "two-bases" / "store"
    for shape, personas in groups.items():
        bases[shape], _ = tiny_fleet(work / "two-bases", personas, shape, store, second_version=False)
    archive = ArchiveOptions(batch_size=16, max_batch_delay_ms=args.max_batch_delay_ms, response_timeout_s=600)
    per_fleet = args.clients // len(groups)

    def serve(shapes: list[str], name: str) -> ServeOptions:
        options = ServeOptions(model_store=store, bases=[str(bases[s]) for s in shapes], workdir=work / name,
                               archive=archive, max_resident_adapters=4, inference_port=free_port(),
                               management_port=free_port(), metrics_port=free_port(),
                               grpc_ports=(free_port(), free_port()), backend_ports=(free_port(), free_port()))
        serve_background(options)  # `persona serve`'s threads: the cores shared among the fleets
        return options

    async def fleets(options: ServeOptions, shapes: list[str]) -> dict:
        headers = TokenSource(token_file=options.inference_token_file).headers()
        url = lambda persona: f"{options.inference_url}/predictions/fleet"  # noqa: E731
        clients = {s: [groups[s][i % 2] for i in range(per_fleet)] for s in shapes}
        await asyncio.gather(*(load(url, headers, c, 2, args.serving_new_tokens) for c in clients.values()))  # warm-up
        runs = await asyncio.gather(*(load(url, headers, c, args.requests_per_client, args.serving_new_tokens)
                                      for c in clients.values()))
        return dict(zip(shapes, runs))

    results: dict = {}
    for label, shapes in [("together", ["t5", "llama"]), ("t5 alone", ["t5"]), ("llama alone", ["llama"])]:
        logger.info("two bases: %s", label)
        options = serve(shapes, label.replace(" ", "-"))
        try:
            results[label] = asyncio.run(fleets(options, shapes))
        finally:
            stop(options.workdir)
    results["together_vs_alone"] = {shape: results["together"][shape]["req_per_s"] / results[f"{shape} alone"][shape]["req_per_s"]
                                    for shape in groups}
    return results


# --- report ---------------------------------------------------------------------------------
def print_table(report: dict, args: argparse.Namespace) -> None:
    for shape, result in report.get("sweep", {}).items():
        print(f"\nSweep, {shape}-shaped base (random weights), {args.device}, LoRA r={args.rank} on q,v, "
              f"{args.input_tokens} input / {args.new_tokens} new tokens greedy; requests/s, best of {args.repeats}")
        print(f"{'threads':>7} | {'batch':>5} | {'k':>3} | {'slots':>7} | {'PEFT':>7} | {'merged':>7} | "
              f"{'slots/merged':>12} | {'slots/PEFT':>10} | {'same, by CPU time':>19}")
        for row in result["table"]:
            print(f"{row['threads']:>7} | {row['batch']:>5} | {row['k']:>3} | {row['slots_rps']:>7.2f} | "
                  f"{row['peft_rps']:>7.2f} | {row['merged_rps']:>7.2f} | {row['slots_vs_merged']:>11.3f}x | "
                  f"{row['slots_vs_peft']:>9.3f}x | {row['cpu_slots_vs_merged']:>7.3f}x / {row['cpu_slots_vs_peft']:.3f}x")
        if "decode_step" in result:
            steps = result["decode_step"]
            print("decode step (s): " + ", ".join(f"{key} {value * 1000:.2f} ms" for key, value in steps["seconds"].items())
                  + (f"; bandwidth floor {steps['bandwidth_floor_s'] * 1000:.2f} ms" if steps["bandwidth_floor_s"] else ""))
        if "slots" in result:
            slots = result["slots"]
            print(f"slots ({shape}, {slots['host_device']}): cold load disk -> slot p50 {slots['disk_load_p50_s'] * 1000:.1f} ms, "
                  f"p99 {slots['disk_load_p99_s'] * 1000:.1f} ms; host tier -> slot p50 {slots['host_load_p50_s'] * 1000:.1f} ms; "
                  f"tables {slots['table_bytes'] / 2**20:.1f} MiB for {slots['adapters']} adapters of "
                  f"{slots['adapter_bytes'] / 2**20:.2f} MiB: {slots['bytes_per_resident_vs_raw']:.3f}x per resident adapter")
    if "serving" in report:
        serving = report["serving"]
        runs = {k: v for k, v in serving.items() if isinstance(v, dict)}
        print(f"\nServing, tiny T5 on CPU, real TorchServe, {args.clients} concurrent clients")
        print(f"{'setup':>36} | {'req/s':>7} | {'p50 s':>6} | {'p99 s':>6} | errors")
        for label, run in runs.items():
            print(f"{label:>36} | {run['req_per_s']:>7.1f} | {run['p50_s']:>6.3f} | {run['p99_s']:>6.3f} | {run['errors']}")
        mixed, single = runs["fleet, 8 personas"]["req_per_s"], runs["fleet, 1 persona"]["req_per_s"]
        per_model = runs["one model per persona, 8 personas"]["req_per_s"]
        print(f"8 personas / 1 persona: {mixed / single:.2f}x; fleet / one model per persona: {mixed / per_model:.2f}x; "
              f"rollout (routing switch -> answering as v2): {serving['rollout_s']:.2f} s")
    if "two_bases" in report:
        two = report["two_bases"]
        print(f"\nTwo bases in one `persona serve` (tiny T5 + tiny Llama, CPU), {args.clients} clients "
              f"over 4 personas ({args.clients // 2} per base)")
        print(f"{'fleet':>8} | {'together req/s':>14} | {'alone req/s':>11} | {'together / alone':>16} | errors")
        for shape, ratio in two["together_vs_alone"].items():
            together, alone = two["together"][shape], two[f"{shape} alone"][shape]
            print(f"{shape:>8} | {together['req_per_s']:>14.1f} | {alone['req_per_s']:>11.1f} | {ratio:>15.2f}x | "
                  f"{together['errors'] + alone['errors']}")
        shares = two["together_vs_alone"].values()
        print(f"both fleets together: {sum(shares):.2f}x one fleet alone (the same cores, shared by two fleets)")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(shape, threads, batch) for shape, result in report.get("sweep", {}).items()
              for threads, batch in dict.fromkeys((row["threads"], row["batch"]) for row in result["table"])]
    if not panels:
        return
    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
    for axis, (shape, threads, batch) in zip(axes[0], panels):
        rows = [r for r in report["sweep"][shape]["table"] if (r["threads"], r["batch"]) == (threads, batch)]
        ks = [r["k"] for r in rows]
        axis.plot(ks, [r["slots_rps"] for r in rows], "o-", label="slot layer")
        axis.plot(ks, [r["peft_rps"] for r in rows], "s--", label="PEFT mixed batch")
        axis.axhline(rows[0]["merged_rps"], color="grey", linestyle=":", label="merged model (ceiling)")
        axis.set(xscale="log", xticks=ks, xticklabels=[str(k) for k in ks], xlabel="distinct adapters in the batch (k)",
                 ylabel="requests / s", ylim=(0, None), title=f"{shape}, batch {batch}, {threads} thread(s)")
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=["sweep", "slots", "serving", "two-bases"],
                        default=["sweep", "slots", "serving", "two-bases"],
                        help="slots rides on the sweep of --slots-shape")
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=["t5-base", "fred-large"])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="distinct adapters per batch")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, nargs="+", default=[32])
    parser.add_argument("--input-tokens", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slots-shape", choices=list(SHAPES), default="fred-large", help="the shape part 2 measures")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: bf16")
    parser.add_argument("--bandwidth-gbs", type=float, default=None, help="device memory bandwidth, for the decode floor")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests-per-client", type=int, default=6)
    parser.add_argument("--serving-new-tokens", type=int, default=16)
    parser.add_argument("--max-batch-delay-ms", type=int, default=5)
    parser.add_argument("--serving-threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--results", type=Path, default=RESULTS, help="where fleet.json and fleet.png go")
    args = parser.parse_args()
    if args.batch[0] % max(args.ks) and "sweep" in args.parts:
        parser.error("--batch must be a multiple of the largest k")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.results.mkdir(parents=True, exist_ok=True)
    report: dict = {"args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        if "sweep" in args.parts:
            report["sweep"] = sweep(Path(tmp), args)
        if "serving" in args.parts:
            report["serving"] = serving(Path(tmp), args)
        if "two-bases" in args.parts:
            report["two_bases"] = two_bases(Path(tmp), args)
    print_table(report, args)
    plot(report, args.results / "fleet.png")
    (args.results / "fleet.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    print(f"\nwrote {args.results / 'fleet.json'} and {args.results / 'fleet.png'}")


if __name__ == "__main__":
    main()
