#!/usr/bin/env python3
"""The fleet's costs and gains, in one run: a table on stdout, `benchmarks/results/fleet.{json,png}`.

1. Memory (CPU fp32, FRED-T5-large-shaped base with random weights: T5Config d_model 1024,
   24+24 layers, d_ff 2816, 16 heads, vocab 50364, gated-gelu; LoRA r=16 on q,v as `persona
   train` defaults): the resident memory (RSS) of ONE fleet process with 1, 10 and 50 adapters
   loaded from disk the way the handler loads them (`load_adapter`), against today's layout of one
   process per persona (base + merged adapter), measured for 2 processes and extrapolated.
   Each measurement runs in a fresh child process. Also: adapter cold-load p50/p99 on that base.
2. Throughput (tiny T5, CPU, real TorchServe): 16 concurrent clients spread over 8 personas vs the
   same 16 clients on one persona (fleet: one worker), and vs one model (one worker, one base
   copy) per persona - the old layout, emulated with 8 single-adapter fleet models - on the same
   cores. Greedy, fixed reply length.
3. Rollout: a new version published and switched in the routing table -> answering unpinned
   requests (tiny model, one replica).
4. Two bases in one `persona serve` (issue 22): a tiny T5 and a tiny causal (Llama) base, 2
   personas each, `--clients` clients over the 4 personas (half per base) through the routing
   front; each fleet's req/s against the same clients on a server with that base alone.

    .venv/bin/python benchmarks/fleet.py                 # everything (~10 min on 2 busy cores)
    .venv/bin/python benchmarks/fleet.py --skip-memory   # throughput and rollout only
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MESSAGES = ["привет, как дела?", "деплой опять упал", "кто сегодня дежурит?", "перезапусти под пожалуйста",
            "что с мониторингом?", "когда релиз?", "почему графана красная?", "го обедать"]
logger = logging.getLogger("fleet-benchmark")


# --- 1. memory ----------------------------------------------------------------------------------
def fred_large_config():
    from transformers import T5Config

    return T5Config(d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_decoder_layers=24, num_heads=16,
                    vocab_size=50364, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                    decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)


def rss_gb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def measure_child(mode: str, personas: list[int], adapter_dir: Path) -> dict:
    """In a child process (a clean heap): the base with random weights, then the adapters; RSS."""
    import gc

    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import T5ForConditionalGeneration

    torch.manual_seed(0)
    base = T5ForConditionalGeneration(fred_large_config()).eval()
    out: dict = {"base_params": sum(p.numel() for p in base.parameters()), "base_only_gb": rss_gb()}
    if mode == "adapter":  # one adapter on disk, loaded under many names by the fleet run
        lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q", "v"], task_type="SEQ_2_SEQ_LM")
        get_peft_model(base, lora).save_pretrained(str(adapter_dir))
        return out
    if mode == "per-persona":  # today's layout: base + adapter, merged into the weights
        PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        gc.collect()
        out["rss_gb"] = rss_gb()
        return out
    model = PeftModel.from_pretrained(base, str(adapter_dir), adapter_name="p0")
    gc.collect()
    rss, loads = {1: rss_gb()}, []
    for index in range(1, max(personas)):
        started = time.perf_counter()
        model.load_adapter(str(adapter_dir), adapter_name=f"p{index}")
        loads.append(time.perf_counter() - started)
        if index + 1 in personas:
            gc.collect()
            rss[index + 1] = rss_gb()
    inputs = {"input_ids": torch.ones((2, 8), dtype=torch.long)}
    with torch.inference_mode():  # the adapters really serve: one mixed-adapter generate
        model.generate(**inputs, adapter_names=["p0", f"p{max(personas) - 1}"], max_new_tokens=2)
    out["rss_gb"] = rss
    out["load_seconds"] = loads
    return out


def memory(work: Path, counts: list[int]) -> dict:
    adapter_dir = work / "fred-adapter"
    runs = {}
    for label, mode in [("adapter", "adapter"), ("fleet", "fleet"), ("per-persona-a", "per-persona"),
                        ("per-persona-b", "per-persona")]:
        logger.info("memory: %s", label)
        result = subprocess.run([sys.executable, __file__, "measure", mode, ",".join(map(str, counts)), str(adapter_dir)],
                                capture_output=True, text=True, check=True)
        runs[label] = json.loads(result.stdout.strip().splitlines()[-1])
    fleet_rss = {int(n): gb for n, gb in runs["fleet"]["rss_gb"].items()}
    processes = [runs["per-persona-a"]["rss_gb"], runs["per-persona-b"]["rss_gb"]]
    loads = sorted(runs["fleet"]["load_seconds"])
    return {
        "base_params": runs["fleet"]["base_params"],
        "base_only_gb": runs["fleet"]["base_only_gb"],
        "fleet_rss_gb": fleet_rss,
        "per_persona_process_gb": processes,
        "per_persona_rss_gb": {n: statistics.mean(processes) * n for n in counts},
        "ratio_50_to_1": fleet_rss[max(counts)] / fleet_rss[min(counts)],
        "cold_load_p50_s": statistics.median(loads),
        "cold_load_p99_s": loads[min(len(loads) - 1, int(round(0.99 * (len(loads) - 1))))],
    }


# --- 2. throughput and 3. rollout ---------------------------------------------------------------
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


def throughput(work: Path, args: argparse.Namespace) -> dict:
    from persona_serving.archive import ArchiveOptions, build_fleet_archive
    from persona_serving.server import ServeOptions, fleet_config, free_port, serve_background, start, stop, wait_until_served
    from personafleet.client import TokenSource

    personas = [f"persona-{i}" for i in range(8)]
    base, store = tiny_fleet(work, personas)
    archive = ArchiveOptions(batch_size=16, max_batch_delay_ms=args.max_batch_delay_ms, response_timeout_s=600)
    options = ServeOptions(model_store=store, bases=[str(base)], workdir=work / "serve", archive=archive,
                           max_resident_adapters=len(personas), inference_port=free_port(), management_port=free_port(),
                           metrics_port=free_port(), grpc_ports=(free_port(), free_port()), torch_threads=args.threads)
    serve_background(options)
    results: dict = {}
    try:
        headers = TokenSource(token_file=options.inference_token_file).headers()
        fleet_url = lambda persona: f"{options.inference_url}/predictions/fleet"  # noqa: E731
        spread = [personas[i % len(personas)] for i in range(args.clients)]
        same = [personas[0]] * args.clients
        for label, clients in [("fleet, 8 personas", spread), ("fleet, 1 persona", same)]:
            asyncio.run(load(fleet_url, headers, clients, 2, args.new_tokens))  # warm-up: adapters resident
            logger.info("throughput: %s", label)
            results[label] = asyncio.run(load(fleet_url, headers, clients, args.requests_per_client, args.new_tokens))
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
        asyncio.run(load(per_model_url, headers, spread, 2, args.new_tokens))
        logger.info("throughput: one model per persona")
        results["one model per persona, 8 personas"] = asyncio.run(
            load(per_model_url, headers, spread, args.requests_per_client, args.new_tokens))
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
                               grpc_ports=(free_port(), free_port()), backend_ports=(free_port(), free_port()),
                               torch_threads=args.threads)
        serve_background(options)
        return options

    async def fleets(options: ServeOptions, shapes: list[str]) -> dict:
        headers = TokenSource(token_file=options.inference_token_file).headers()
        url = lambda persona: f"{options.inference_url}/predictions/fleet"  # noqa: E731
        clients = {s: [groups[s][i % 2] for i in range(per_fleet)] for s in shapes}
        await asyncio.gather(*(load(url, headers, c, 2, args.new_tokens) for c in clients.values()))  # warm-up
        runs = await asyncio.gather(*(load(url, headers, c, args.requests_per_client, args.new_tokens)
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
def print_table(report: dict) -> None:
    if "memory" in report:
        memory = report["memory"]
        print(f"\nMemory, CPU fp32, FRED-T5-large-shaped base ({memory['base_params'] / 1e6:.0f}M parameters), LoRA r=16 q,v")
        print(f"{'personas':>9} | {'fleet, one process (GB)':>24} | {'one process per persona (GB)':>29}")
        for n, gb in memory["fleet_rss_gb"].items():
            print(f"{n:>9} | {gb:>24.2f} | {memory['per_persona_rss_gb'][n]:>29.2f}")
        print(f"one per-persona process measured twice: {memory['per_persona_process_gb'][0]:.2f} and "
              f"{memory['per_persona_process_gb'][1]:.2f} GB (larger counts extrapolated)")
        print(f"50 personas / 1 persona (fleet): {memory['ratio_50_to_1']:.3f}x (goal <= 1.15x)")
        print(f"adapter cold load on that base: p50 {memory['cold_load_p50_s'] * 1000:.0f} ms, p99 {memory['cold_load_p99_s'] * 1000:.0f} ms")
    runs = {k: v for k, v in report["throughput"].items() if isinstance(v, dict)}
    print(f"\nThroughput, tiny T5 on CPU, {report['args']['clients']} concurrent clients")
    print(f"{'setup':>36} | {'req/s':>7} | {'p50 s':>6} | {'p99 s':>6} | errors")
    for label, run in runs.items():
        print(f"{label:>36} | {run['req_per_s']:>7.1f} | {run['p50_s']:>6.3f} | {run['p99_s']:>6.3f} | {run['errors']}")
    ratios = report["ratios"]
    print(f"8 personas / 1 persona: {ratios['mixed_vs_single']:.2f}x (goal >= 0.8x); "
          f"fleet / one model per persona: {ratios['fleet_vs_per_model']:.2f}x (goal >= 3x)")
    print(f"rollout (routing switch -> answering as v2): {report['throughput']['rollout_s']:.2f} s (goal < 2 s)")
    if "two_bases" in report:
        two = report["two_bases"]
        print(f"\nTwo bases in one `persona serve` (tiny T5 + tiny Llama, CPU), {report['args']['clients']} clients "
              f"over 4 personas ({report['args']['clients'] // 2} per base)")
        print(f"{'fleet':>8} | {'together req/s':>14} | {'alone req/s':>11} | {'together / alone':>16} | errors")
        for shape, ratio in two["together_vs_alone"].items():
            together, alone = two["together"][shape], two[f"{shape} alone"][shape]
            print(f"{shape:>8} | {together['req_per_s']:>14.1f} | {alone['req_per_s']:>11.1f} | {ratio:>15.2f}x | "
                  f"{together['errors'] + alone['errors']}")


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if "memory" in report else 1
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4))
    axes = list(axes) if panels > 1 else [axes]
    if "memory" in report:
        memory = report["memory"]
        counts = list(memory["fleet_rss_gb"])
        axes[0].plot(counts, list(memory["fleet_rss_gb"].values()), "o-", label="fleet: one process")
        axes[0].plot(counts, [memory["per_persona_rss_gb"][n] for n in counts], "s--",
                     label="one process per persona (2 measured, extrapolated)")
        axes[0].set(xlabel="personas", ylabel="resident memory (GB)", yscale="log",
                    title="Memory, FRED-T5-large shape, CPU fp32")
        axes[0].legend()
    runs = {k: v for k, v in report["throughput"].items() if isinstance(v, dict)}
    axes[-1].barh(list(runs), [r["req_per_s"] for r in runs.values()])
    axes[-1].set(xlabel="requests / s", title=f"Throughput, tiny T5, {report['args']['clients']} clients")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "measure":
        mode, personas, adapter_dir = sys.argv[2], [int(n) for n in sys.argv[3].split(",")], Path(sys.argv[4])
        print(json.dumps(measure_child(mode, personas, adapter_dir)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-two-bases", action="store_true", help="leave out part 4 (two bases in one serve)")
    parser.add_argument("--personas", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests-per-client", type=int, default=6)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--max-batch-delay-ms", type=int, default=5)
    parser.add_argument("--threads", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    parser.add_argument("--results", type=Path, default=RESULTS, help="where fleet.json and fleet.png go")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.results.mkdir(parents=True, exist_ok=True)
    report: dict = {"args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        if not args.skip_memory:
            report["memory"] = memory(Path(tmp), args.personas)
        report["throughput"] = throughput(Path(tmp), args)
        if not args.skip_two_bases:
            report["two_bases"] = two_bases(Path(tmp), args)
    runs = report["throughput"]
    report["ratios"] = {
        "mixed_vs_single": runs["fleet, 8 personas"]["req_per_s"] / runs["fleet, 1 persona"]["req_per_s"],
        "fleet_vs_per_model": runs["fleet, 8 personas"]["req_per_s"] / runs["one model per persona, 8 personas"]["req_per_s"],
    }
    print_table(report)
    plot(report, args.results / "fleet.png")
    (args.results / "fleet.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    print(f"\nwrote {args.results / 'fleet.json'} and {args.results / 'fleet.png'}")


if __name__ == "__main__":
    main()
