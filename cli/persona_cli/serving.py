"""Serving: `persona package-asr|serve|switch|chat|transcribe` (persona_serving)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from persona_cli.common import log_steps
from personafleet.errors import PersonaError
from personafleet.lora import MAX_LORA_RANK
from personafleet.names import MAX_NEW_TOKENS, parse_version

app = typer.Typer()


@app.command("package-asr")
def package_asr(
    model: Annotated[str, typer.Option("--model", help="Speech-to-text checkpoint: a directory (`persona init-asr`) or a hub id (e.g. openai/whisper-large-v3-turbo).")],
    out: Annotated[Path, typer.Option("--out", help="Directory that receives asr.mar (`persona serve` looks in STORE/asr/).")],
    version: Annotated[str, typer.Option("--version", help="Archive version.")] = "1",
    language: Annotated[Optional[str], typer.Option(help="Language forced on the model (Whisper code); 'auto' lets it detect.")] = "ru",
    bundle: Annotated[Optional[bool], typer.Option("--bundle/--reference", help="Copy the checkpoint into the .mar. [default: bundle a directory, reference a hub id]")] = None,
    max_seconds: Annotated[float, typer.Option(min=1, help="Longer audio is refused (413).")] = 120,
    batch_size: Annotated[int, typer.Option(min=1, help="Most requests per handler call.")] = 8,
    max_batch_delay_ms: Annotated[int, typer.Option(min=1, help="How long TorchServe waits to fill a batch (ms).")] = 30,
) -> None:
    """Build the ASR model's TorchServe archive (asr.mar)."""
    from persona_serving.archive import ArchiveOptions
    from persona_serving.asr_package import build_asr_archive

    options = ArchiveOptions(batch_size=batch_size, max_batch_delay_ms=max_batch_delay_ms)
    print(build_asr_archive(model, out, version=version, language=None if language == "auto" else language,
                            bundle=bundle, max_seconds=max_seconds, options=options))


@app.command()
def serve(
    model_store: Annotated[Optional[Path], typer.Option(help="Model store: STORE/NAME/vN/ versions and routing.json.")] = None,
    base: Annotated[Optional[list[str]], typer.Option("--base", help="Base model to serve, one fleet each (hub id or path; repeatable). [default: every base the store's routing table uses]")] = None,
    fleet: Annotated[Optional[list[str]], typer.Option("--fleet", help="Another base's fleet as BASE=URL (its serving Service; repeatable): its personas' requests are forwarded there.")] = None,
    max_resident_adapters: Annotated[int, typer.Option(min=1, help="Adapter slots of each worker (LRU).")] = 32,
    max_lora_rank: Annotated[int, typer.Option(min=1, max=MAX_LORA_RANK, help="Widest adapter rank a slot takes; wider versions are refused.")] = MAX_LORA_RANK,
    max_host_adapters: Annotated[int, typer.Option(min=0, help="Adapters each worker keeps in (pinned, on CUDA) host memory: a slot miss they hold is a copy, not a disk read (0: off).")] = 0,
    max_persona_labels: Annotated[int, typer.Option(min=0, help='Personas with their own label in the serving metrics; the rest are persona="other".')] = 100,
    bundle_base: Annotated[bool, typer.Option("--bundle-base", help="Copy the (local) base model into fleet.mar.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Most rows a worker decodes together (live rows; more requests queue).")] = 8,
    max_batch_delay_ms: Annotated[int, typer.Option(min=1, help="How long an idle worker waits for more requests to start with (ms; TorchServe reads 0 as 100).")] = 30,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (each loads the base once).")] = 1,
    response_timeout: Annotated[int, typer.Option(min=1, help="Seconds TorchServe allows one batch.")] = 120,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=MAX_NEW_TOKENS, help="Reply length cap in tokens.")] = 128,
    max_cached_tokens: Annotated[int, typer.Option(min=1, help="Key/value cache columns a worker's live rows may reserve (more requests queue).")] = 16384,
    workdir: Annotated[Path, typer.Option(help="Config, logs, fleet.mar, key_file.json and the clients' inference-token of this server.")] = Path(".persona/serve"),
    stop: Annotated[bool, typer.Option("--stop", help="Stop the server started from --workdir.")] = False,
    foreground: Annotated[bool, typer.Option("--foreground", help="Stay in the foreground (container entrypoint).")] = False,
    host: Annotated[str, typer.Option(help="Address the public listeners bind.")] = "127.0.0.1",
    inference_port: Annotated[int, typer.Option(help="Inference API port.")] = 8080,
    management_port: Annotated[int, typer.Option(help="Management API port (localhost, or the auth front).")] = 8081,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8082,
    auth_token_file: Annotated[Optional[Path], typer.Option(help="Secret file with the inference token: enables the auth front (--foreground).")] = None,
    management_token_file: Annotated[Optional[Path], typer.Option(help="Secret file with the management token (auth front).")] = None,
    token_expiration_min: Annotated[Optional[float], typer.Option(min=0.01, help="Lifetime of TorchServe's keys. [default: 60 behind the auth front, which renews them; else the server's lifetime: clients hold W/inference-token, the inference key alone, which cannot renew itself]")] = None,
    backend_ports: Annotated[tuple[int, int], typer.Option(help="TorchServe's own inference/management ports behind the auth front.")] = (18080, 18081),
    grpc_ports: Annotated[tuple[int, int], typer.Option(help="TorchServe's gRPC ports (localhost; unused).")] = (7070, 7071),
    torch_threads: Annotated[Optional[int], typer.Option(min=1, help="OMP_NUM_THREADS of the workers (default: $OMP_NUM_THREADS, else cores / models served).")] = None,
    asr: Annotated[Optional[Path], typer.Option("--asr", help="ASR archive to serve as `asr`. [default: STORE/asr/asr.mar if present]")] = None,
    reply_filter: Annotated[Optional[Path], typer.Option("--reply-filter", help="YAML of the fleet's reply filter (blocklist, patterns, pii, fallback), added to each persona's.")] = None,
) -> None:
    """Run TorchServe with one fleet model per base: every persona of the store on its base (background by default; token auth on)."""
    from persona_serving import server
    from persona_serving.archive import ArchiveOptions
    from persona_serving.reply_filter import load_rules

    if stop:
        print("stopped" if server.stop(workdir) else f"no server running from {workdir}")
        return
    if model_store is None:
        raise PersonaError("--model-store is required")
    fleets = dict(_fleet(entry) for entry in fleet or [])
    if auth_token_file and not (foreground and management_token_file):
        raise PersonaError("the auth front (--auth-token-file) needs --foreground and --management-token-file")
    options = server.ServeOptions(
        model_store=model_store, bases=base or [], fleets=fleets, bundle_base=bundle_base,
        max_resident_adapters=max_resident_adapters, max_lora_rank=max_lora_rank, max_host_adapters=max_host_adapters,
        max_persona_labels=max_persona_labels, max_new_tokens=max_new_tokens, max_cached_tokens=max_cached_tokens,
        workdir=workdir, host=host, inference_port=inference_port,
        archive=ArchiveOptions(batch_size=batch_size, max_batch_delay_ms=max_batch_delay_ms, workers=workers,
                               response_timeout_s=response_timeout),
        management_port=management_port, metrics_port=metrics_port, auth_token_file=auth_token_file,
        management_token_file=management_token_file, token_expiration_min=token_expiration_min,
        backend_ports=backend_ports, grpc_ports=grpc_ports, torch_threads=torch_threads, asr=asr,
        reply_filter=load_rules(reply_filter) if reply_filter else None,
    )
    log_steps()
    if foreground:
        sys.exit(server.serve_foreground(options))
    table = server.serve_background(options)
    for persona, route in table.personas.items():
        print(f"serving {persona} v{route.serving}")
    for name, where in server.endpoints(options).items():
        print(f"{name:>10}: {where}")


def _fleet(entry: str) -> tuple[str, str]:
    base, sep, url = entry.partition("=")
    if not sep or not base or not url.startswith(("http://", "https://")):
        raise PersonaError(f"--fleet {entry}: give BASE=URL, e.g. ai-forever/FRED-T5-large=http://fred-serving:8080")
    return base, url


@app.command()
def switch(
    model_store: Annotated[Path, typer.Option(help="Model store of the running `persona serve`.")],
    persona: Annotated[str, typer.Option("--persona", help="Persona to switch.")],
    version: Annotated[str, typer.Option("--version", help="Published version that answers from now on.")],
    weight: Annotated[int, typer.Option(min=0, max=100, help="Percent of conversations the version answers (a local "
                                        "canary beside the serving version); 100 makes it the serving version.")] = 100,
) -> None:
    """Make a published version the one a persona answers with (the routing-table write the operator
    does), or with --weight give it a share of the conversations."""
    from personafleet.routing import RoutingTable, update_routing
    from personafleet.store import published_version

    number = parse_version(version)
    info = published_version(model_store, persona, number)  # refuses an unpublished, mislabelled or outside folder

    def change(table: RoutingTable) -> None:
        if weight == 100:
            table.add(persona, number, serve=True, base=info.base)
            return
        serving = table.personas[persona].serving if persona in table.personas else None
        if serving is None or serving == number:
            raise PersonaError(f"--weight shares {persona}'s conversations between its serving version and another; "
                               f"{'it has none' if serving is None else f'v{number} is the serving one'}")
        table.add(persona, number, serve=False, base=info.base)
        table.weigh(persona, {serving: 100 - weight, number: weight})  # weight 0 ends the canary

    table = update_routing(model_store, change)
    route = table.personas[persona]
    listed = ", ".join(str(v) for v in route.versions)
    shares = f"; conversations: {', '.join(f'v{v} {w}%' for v, w in route.weights.items())}" if route.weights else ""
    print(f"{persona} serves v{route.serving} (versions: {listed}){shares}")


@app.command()
def chat(
    persona: Annotated[str, typer.Option("--persona", help="Persona to chat with.")],
    url: Annotated[Optional[str], typer.Option(help="Inference API (default: the local `persona serve`).")] = None,
    token_file: Annotated[Optional[Path], typer.Option(help="key_file.json or a file holding the token.")] = None,
    workdir: Annotated[Path, typer.Option(help="Workdir of the local `persona serve`.")] = Path(".persona/serve"),
    version: Annotated[Optional[str], typer.Option(help="Pin a version (default: the one the routing table serves).")] = None,
    model: Annotated[str, typer.Option(help="TorchServe model of the fleet.")] = "fleet",
    timeout: Annotated[float, typer.Option(min=1, help="Seconds per request.")] = 60,
    show_facts: Annotated[bool, typer.Option("--show-facts", help="Print the facts retrieved into each reply's prompt (stderr).")] = False,
) -> None:
    """Chat with a served persona; piped stdin gives one reply per line."""
    from persona_serving.chat import run_chat

    pinned = parse_version(version) if version is not None else None
    refused = run_chat(persona, url=url, token_file=token_file, workdir=workdir, version=pinned, timeout=timeout, model=model,
                       show_facts=show_facts)
    if refused:
        sys.exit(1)


@app.command()
def transcribe(
    audio_file: Annotated[Path, typer.Argument(help="Audio file (WAV, OGG/Opus, MP3, M4A, ...).")],
    url: Annotated[Optional[str], typer.Option(help="Inference API serving `asr` (default: the local `persona serve`).")] = None,
    token_file: Annotated[Optional[Path], typer.Option(help="key_file.json or a file holding the token.")] = None,
    workdir: Annotated[Path, typer.Option(help="Workdir of the local `persona serve`.")] = Path(".persona/serve"),
    language: Annotated[Optional[str], typer.Option(help="Language to transcribe in (default: the archive's).")] = None,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds for the request.")] = 60,
) -> None:
    """Print what the served ASR model hears in an audio file."""
    from persona_serving.listen import transcribe_file

    print(transcribe_file(audio_file, url=url, token_file=token_file, workdir=workdir, language=language, timeout=timeout))
