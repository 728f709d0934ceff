"""`persona`: one command-line entry point for every step. It only parses arguments and calls
the parts; heavy libraries are imported inside each command so `persona --help` stays fast.

Each command's block is owned by the part it calls (see docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from personafleet.errors import PersonaError
from personafleet.inference import MAX_NEW_TOKENS
from personafleet.prompt import CONTEXT_CHARS, CONTEXT_TURNS, CONTEXT_WINDOW_SECONDS, MERGE_GAP_SECONDS, MESSAGE_CHARS

app = typer.Typer(
    name="persona",
    help="Turn Telegram chat history into persona chatbots served by TorchServe.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Turn Telegram chat history into persona chatbots served by TorchServe."""


# --- data: persona_training.prepare -------------------------------------------------------
@app.command()
def prepare(
    exports: Annotated[list[Path], typer.Argument(help="Telegram Desktop JSON exports (result.json).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for train.jsonl, val.jsonl, stats.json.")],
    persona_id: Annotated[Optional[str], typer.Option(help="Keep only replies by this from_id (e.g. user123).")] = None,
    context_turns: Annotated[int, typer.Option(min=1, help="Most context turns per record.")] = CONTEXT_TURNS,
    window_minutes: Annotated[float, typer.Option(min=0, help="Preceding messages within this window are context.")] = CONTEXT_WINDOW_SECONDS / 60,
    merge_gap_seconds: Annotated[float, typer.Option(min=0, help="Consecutive messages of one author this close are one turn.")] = MERGE_GAP_SECONDS,
    max_message_chars: Annotated[int, typer.Option(min=1, help="Longer replies are not used as targets; longer context turns are cut.")] = MESSAGE_CHARS,
    max_context_chars: Annotated[int, typer.Option(min=1, help="Character budget of a record's context.")] = CONTEXT_CHARS,
    val_fraction: Annotated[float, typer.Option(min=0.0, max=0.9, help="Share of records held out for validation, in whole conversations.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the train/validation split.")] = 13,
    scrub: Annotated[bool, typer.Option("--scrub", help="Replace e-mails, phone numbers and @mentions with placeholders.")] = False,
) -> None:
    """Turn Telegram exports into dialogue records for training."""
    from persona_training.prepare import PrepareOptions, run_prepare

    options = PrepareOptions(
        persona_id=persona_id,
        context_turns=context_turns,
        window_minutes=window_minutes,
        merge_gap_seconds=merge_gap_seconds,
        max_message_chars=max_message_chars,
        max_context_chars=max_context_chars,
        val_fraction=val_fraction,
        seed=seed,
        scrub=scrub,
    )
    run_prepare(exports, out, options)


# --- base model and training: persona_training (init-base, train) ------------------------
@app.command("init-base")
def init_base(
    out: Annotated[Path, typer.Option("--out", help="Directory for the base model and its tokenizer.")],
    corpus: Annotated[Optional[list[Path]], typer.Option("--corpus", help="Telegram export(s) to learn from (repeatable). [default: examples/sample-export/result.json]")] = None,
    shape: Annotated[str, typer.Option(help="t5: T5 tokenizer and architecture; fred: FRED-T5's (byte-level BPE, plain added markers, gated-GELU, untied).")] = "t5",
    steps: Annotated[int, typer.Option(min=1, help="Pre-training steps.")] = 400,
    d_model: Annotated[int, typer.Option(min=8, help="Hidden size.")] = 128,
    layers: Annotated[int, typer.Option(min=1, help="Encoder and decoder layers (each).")] = 2,
    vocab_size: Annotated[int, typer.Option(min=64, help="Most tokenizer pieces.")] = 4000,
    seed: Annotated[int, typer.Option(help="Seed of initialisation and pre-training.")] = 13,
) -> None:
    """Build a tiny T5 base (tokenizer + briefly pre-trained model) from a chat export."""
    import logging

    from persona_training.base_model import DEFAULT_CORPUS, BaseModelOptions, init_base as build

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if shape not in ("t5", "fred"):
        raise PersonaError(f"--shape {shape}: choose t5 or fred")
    options = BaseModelOptions(shape=shape, steps=steps, d_model=d_model, num_layers=layers, vocab_size=vocab_size, seed=seed)
    build(out, corpus or [DEFAULT_CORPUS], options)


@app.command()
def train(
    data: Annotated[list[Path], typer.Option("--data", help="`persona prepare` output dir (repeatable: datasets are concatenated).")],
    base: Annotated[str, typer.Option("--base", help="Base model: a directory or a hub id (e.g. ai-forever/FRED-T5-large).")],
    out: Annotated[Path, typer.Option("--out", help="Run directory: adapter, tokenizer, report.json, loss curve, model card.")],
    config: Annotated[Optional[Path], typer.Option("--config", help="Training config (YAML); defaults otherwise.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint in --out, if any.")] = False,
    merge: Annotated[bool, typer.Option("--merge", help="Also write OUT/merged: the base with the adapter folded in.")] = False,
    knowledge: Annotated[Optional[list[Path]], typer.Option("--knowledge", help="Facts about the persona (Markdown list or one per line; repeatable), retrieved into each prompt.")] = None,
) -> None:
    """Fine-tune a LoRA adapter on dialogue records. Exits 143 after checkpointing on SIGTERM."""
    import logging

    from persona_training.config import load_config
    from persona_training.train import PREEMPTED_EXIT_CODE, Preempted, train as run_training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = load_config(config).with_knowledge_files(knowledge or [])
        run_training(data, base, out, settings, resume=resume, merge=merge)
    except Preempted:
        raise typer.Exit(PREEMPTED_EXIT_CODE) from None


@app.command("init-asr")
def init_asr(
    out: Annotated[Path, typer.Option("--out", help="Directory for the speech model, its processor and report.json.")],
    corpus: Annotated[Optional[list[Path]], typer.Option("--corpus", help="Telegram export(s) whose sentences it learns (repeatable). [default: examples/sample-export/result.json]")] = None,
    steps: Annotated[int, typer.Option(min=1, help="Training steps.")] = 300,
    sentences: Annotated[int, typer.Option(min=2, help="Most sentences synthesised.")] = 20,
    held_out: Annotated[int, typer.Option(min=1, help="Sentences kept out of training (CER on unseen speech).")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of sentence choice, initialisation and training.")] = 13,
) -> None:
    """Build a tiny Whisper that recognises sentences of a chat read by espeak-ng (needs espeak-ng)."""
    import logging

    from persona_training.asr_model import AsrOptions, init_asr as build
    from persona_training.base_model import DEFAULT_CORPUS

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = AsrOptions(steps=steps, sentences=sentences, held_out=held_out, seed=seed)
    report = build(out, corpus or [DEFAULT_CORPUS], options)
    print(f"character error rate: {report['cer']['trained']:.3f} on trained sentences, "
          f"{report['cer']['held_out']:.3f} on held-out ones (report: {out / 'report.json'})")


# --- packaging: persona_training.package (package) ---------------------------------------
@app.command()
def package(
    run: Annotated[Path, typer.Option("--run", help="Training run directory (adapter, persona.json, report.json).")],
    name: Annotated[str, typer.Option("--name", help="Persona name (what requests name).")],
    version: Annotated[str, typer.Option("--version", help="Version: a positive integer such as 3.")],
    out: Annotated[Path, typer.Option("--out", help="The version's folder in the model store: STORE/NAME/vN.")],
    base_path: Annotated[Optional[str], typer.Option(help="Base model hub id or path to record (default: the one the adapter was trained on).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace a folder that holds another version.")] = False,
) -> None:
    """Publish a training run as a version of a persona in the model store."""
    from persona_training.package import publish_version

    print(publish_version(run, name, version, out, base_path=base_path, force=force))


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
    from persona_training.asr_package import build_asr_archive

    options = ArchiveOptions(batch_size=batch_size, max_batch_delay_ms=max_batch_delay_ms)
    print(build_asr_archive(model, out, version=version, language=None if language == "auto" else language,
                            bundle=bundle, max_seconds=max_seconds, options=options))


# --- serving: persona_serving (serve, switch, chat, transcribe) --------------------------
@app.command()
def serve(
    model_store: Annotated[Optional[Path], typer.Option(help="Model store: STORE/NAME/vN/ versions and routing.json.")] = None,
    base: Annotated[Optional[str], typer.Option(help="Base model of the fleet (hub id or path; the one the adapters were trained on).")] = None,
    max_resident_adapters: Annotated[int, typer.Option(min=1, help="Adapters each worker keeps loaded (LRU).")] = 32,
    bundle_base: Annotated[bool, typer.Option("--bundle-base", help="Copy the (local) base model into fleet.mar.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Most requests per handler call (dynamic batching).")] = 8,
    max_batch_delay_ms: Annotated[int, typer.Option(min=1, help="How long TorchServe waits to fill a batch (ms; TorchServe reads 0 as 100).")] = 30,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (each loads the base once).")] = 1,
    response_timeout: Annotated[int, typer.Option(min=1, help="Seconds TorchServe allows one batch.")] = 120,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=MAX_NEW_TOKENS, help="Reply length cap in tokens.")] = 128,
    workdir: Annotated[Path, typer.Option(help="Config, logs, fleet.mar and key_file.json of this server.")] = Path(".persona/serve"),
    stop: Annotated[bool, typer.Option("--stop", help="Stop the server started from --workdir.")] = False,
    foreground: Annotated[bool, typer.Option("--foreground", help="Stay in the foreground (container entrypoint).")] = False,
    host: Annotated[str, typer.Option(help="Address the public listeners bind.")] = "127.0.0.1",
    inference_port: Annotated[int, typer.Option(help="Inference API port.")] = 8080,
    management_port: Annotated[int, typer.Option(help="Management API port (localhost, or the auth front).")] = 8081,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.")] = 8082,
    auth_token_file: Annotated[Optional[Path], typer.Option(help="Secret file with the inference token: enables the auth front (--foreground).")] = None,
    management_token_file: Annotated[Optional[Path], typer.Option(help="Secret file with the management token (auth front).")] = None,
    token_expiration_min: Annotated[float, typer.Option(min=0.01, help="Lifetime of TorchServe's keys.")] = 60,
    backend_ports: Annotated[tuple[int, int], typer.Option(help="TorchServe's own inference/management ports behind the auth front.")] = (18080, 18081),
    grpc_ports: Annotated[tuple[int, int], typer.Option(help="TorchServe's gRPC ports (localhost; unused).")] = (7070, 7071),
    torch_threads: Annotated[Optional[int], typer.Option(min=1, help="OMP_NUM_THREADS of the workers on CPU (cores / workers).")] = None,
    asr: Annotated[Optional[Path], typer.Option("--asr", help="ASR archive to serve as `asr`. [default: STORE/asr/asr.mar if present]")] = None,
) -> None:
    """Run TorchServe with the fleet model: every persona of the store on one base (background by default; token auth on)."""
    import logging

    from persona_serving import server
    from persona_serving.archive import ArchiveOptions

    if stop:
        print("stopped" if server.stop(workdir) else f"no server running from {workdir}")
        return
    if model_store is None or base is None:
        raise PersonaError("--model-store and --base are required")
    if auth_token_file and not (foreground and management_token_file):
        raise PersonaError("the auth front (--auth-token-file) needs --foreground and --management-token-file")
    options = server.ServeOptions(
        model_store=model_store, base=base, bundle_base=bundle_base, max_resident_adapters=max_resident_adapters,
        max_new_tokens=max_new_tokens, workdir=workdir, host=host, inference_port=inference_port,
        archive=ArchiveOptions(batch_size=batch_size, max_batch_delay_ms=max_batch_delay_ms, workers=workers,
                               response_timeout_s=response_timeout),
        management_port=management_port, metrics_port=metrics_port, auth_token_file=auth_token_file,
        management_token_file=management_token_file, token_expiration_min=token_expiration_min,
        backend_ports=backend_ports, grpc_ports=grpc_ports, torch_threads=torch_threads, asr=asr,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if foreground:
        sys.exit(server.serve_foreground(options))
    table = server.serve_background(options)
    for persona, route in table.personas.items():
        print(f"serving {persona} v{route.serving}")
    for name, where in server.endpoints(options).items():
        print(f"{name:>10}: {where}")


@app.command()
def switch(
    model_store: Annotated[Path, typer.Option(help="Model store of the running `persona serve`.")],
    persona: Annotated[str, typer.Option("--persona", help="Persona to switch.")],
    version: Annotated[str, typer.Option("--version", help="Published version that answers from now on.")],
) -> None:
    """Make a published version the one a persona answers with (the routing-table write the operator does)."""
    from personafleet.routing import parse_version, update_routing, version_dir
    from personafleet.store import read_version_info

    number = parse_version(version)
    read_version_info(version_dir(model_store, persona, number))  # refuses an unpublished folder
    table = update_routing(model_store, lambda t: t.add(persona, number, serve=True))
    listed = ", ".join(str(v) for v in table.personas[persona].versions)
    print(f"{persona} serves v{number} (versions: {listed})")


@app.command()
def chat(
    persona: Annotated[str, typer.Option("--persona", help="Persona to chat with.")],
    url: Annotated[Optional[str], typer.Option(help="Inference API (default: the local `persona serve`).")] = None,
    token_file: Annotated[Optional[Path], typer.Option(help="key_file.json or a file holding the token.")] = None,
    workdir: Annotated[Path, typer.Option(help="Workdir of the local `persona serve`.")] = Path(".persona/serve"),
    version: Annotated[Optional[str], typer.Option(help="Pin a version (default: the one the routing table serves).")] = None,
    model: Annotated[str, typer.Option(help="TorchServe model of the fleet.")] = "fleet",
    timeout: Annotated[float, typer.Option(min=1, help="Seconds per request.")] = 60,
) -> None:
    """Chat with a served persona; piped stdin gives one reply per line."""
    from persona_serving.chat import run_chat

    from personafleet.routing import parse_version

    pinned = parse_version(version) if version is not None else None
    refused = run_chat(persona, url=url, token_file=token_file, workdir=workdir, version=pinned, timeout=timeout, model=model)
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


# --- bot: persona_bot (bot, export-feedback) ---------------------------------------------
@app.command()
def bot() -> None:
    """Run the Telegram bot (configured by environment variables, see docs/bot.md)."""
    import asyncio
    import logging

    from persona_bot.settings import load_settings

    settings = load_settings()  # before the heavy imports: a bad variable fails fast
    from persona_bot.service import run_bot

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run_bot(settings))


@app.command("export-feedback")
def export_feedback(
    out: Annotated[Path, typer.Option("--out", help="Directory to write train.jsonl into.")],
    persona: Annotated[Optional[str], typer.Option(help="Only replies of this persona.")] = None,
    database_url: Annotated[
        Optional[str], typer.Option(envvar="DATABASE_URL", help="The bot's database (default: $DATABASE_URL).")
    ] = None,
) -> None:
    """Write replies rated 👍 in the bot as dialogue records for the next training run."""
    import logging

    from persona_bot.export import export_feedback as run_export

    if not database_url:
        raise PersonaError("no database: pass --database-url or set DATABASE_URL")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    run_export(database_url, out, persona)


# --- operator: persona_operator (operator) -----------------------------------------------
@app.command("operator")
def operator_command(
    namespace: Annotated[Optional[str], typer.Option(help="Namespace to watch (default: $PERSONA_NAMESPACE, else 'default').")] = None,
    standalone: Annotated[bool, typer.Option("--standalone/--peering", help="Run alone (one replica) or coordinate through kopf peering.")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", help="Log every kopf step.")] = False,
) -> None:
    """Run the PersonaModel operator: train on every spec change, roll out, report status. Other settings: PERSONA_* environment variables (docs/operator.md)."""
    from persona_operator.runner import run
    from persona_operator.settings import Settings

    settings = Settings.from_env()
    if namespace:
        settings = settings.model_copy(update={"namespace": namespace})
    run(settings, standalone=standalone, verbose=verbose)


def main() -> None:
    """Entry point: user-facing errors become one line on stderr and exit status 2."""
    try:
        app()
    except PersonaError as exc:
        print(f"persona: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # a path the user gave that cannot be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"persona: error: {where}{exc.strerror or exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("persona: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
