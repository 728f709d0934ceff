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
from personafleet.prompt import CONTEXT_CHARS, CONTEXT_TURNS

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
    window_minutes: Annotated[float, typer.Option(min=0, help="Preceding messages within this window are context.")] = 180,
    max_message_chars: Annotated[int, typer.Option(min=1, help="Longer replies are not used as targets.")] = 200,
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
    options = BaseModelOptions(steps=steps, d_model=d_model, num_layers=layers, vocab_size=vocab_size, seed=seed)
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


# --- packaging: persona_training.package (package) ---------------------------------------
@app.command()
def package(
    run: Annotated[Path, typer.Option("--run", help="Training run directory (adapter, persona.json, report.json).")],
    name: Annotated[str, typer.Option("--name", help="Persona name = TorchServe model name.")],
    version: Annotated[str, typer.Option("--version", help="Model version, e.g. 3.")],
    out: Annotated[Path, typer.Option("--out", help="Directory that receives NAME.mar.")],
    base_path: Annotated[Optional[str], typer.Option(help="Base model hub id or mounted path (default: the one the adapter was trained on).")] = None,
    bundle_base: Annotated[bool, typer.Option("--bundle-base", help="Copy the (local) base model into the .mar.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Most requests per handler call (dynamic batching).")] = 8,
    max_batch_delay_ms: Annotated[int, typer.Option(min=1, help="How long TorchServe waits to fill a batch (ms; TorchServe reads 0 as 100).")] = 30,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes per TorchServe instance.")] = 1,
    response_timeout: Annotated[int, typer.Option(min=1, help="Seconds TorchServe allows one batch.")] = 120,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Reply length cap in tokens.")] = 128,
    merge: Annotated[bool, typer.Option("--merge/--no-merge", help="Merge the LoRA adapter into the base at load.")] = True,
) -> None:
    """Build a versioned TorchServe .mar from a training run."""
    from persona_training.package import ArchiveOptions, build_archive

    options = ArchiveOptions(
        batch_size=batch_size, max_batch_delay_ms=max_batch_delay_ms, workers=workers,
        response_timeout_s=response_timeout, max_new_tokens=max_new_tokens, merge_adapter=merge,
    )
    path = build_archive(run, name, version, out, base_path=base_path, bundle_base=bundle_base, options=options)
    print(path)


# --- serving: persona_serving (serve, chat) ----------------------------------------------
@app.command()
def serve(
    model_store: Annotated[Optional[Path], typer.Option(help="Model store: NAME.mar files or NAME/vN/NAME.mar.")] = None,
    models: Annotated[Optional[list[str]], typer.Option("--models", help="Persona to load (repeatable; default: all in the store).")] = None,
    workdir: Annotated[Path, typer.Option(help="Config, logs and key_file.json of this server.")] = Path(".persona/serve"),
    stop: Annotated[bool, typer.Option("--stop", help="Stop the server started from --workdir.")] = False,
    foreground: Annotated[bool, typer.Option("--foreground", help="Stay in the foreground (container entrypoint).")] = False,
    models_file: Annotated[Optional[Path], typer.Option(help="models.json of desired versions (with --foreground).")] = None,
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
) -> None:
    """Run TorchServe for a model store (background by default; token auth on)."""
    import logging

    from persona_serving import server

    if stop:
        print("stopped" if server.stop(workdir) else f"no server running from {workdir}")
        return
    if model_store is None:
        raise PersonaError("--model-store is required")
    if auth_token_file and not (foreground and management_token_file):
        raise PersonaError("the auth front (--auth-token-file) needs --foreground and --management-token-file")
    options = server.ServeOptions(
        model_store=model_store, workdir=workdir, host=host, inference_port=inference_port,
        management_port=management_port, metrics_port=metrics_port, auth_token_file=auth_token_file,
        management_token_file=management_token_file, token_expiration_min=token_expiration_min,
        backend_ports=backend_ports, grpc_ports=grpc_ports, torch_threads=torch_threads,
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if foreground:
        sys.exit(server.serve_foreground(options, models_file, models or []))
    for persona, version in server.serve_background(options, models or []).items():
        print(f"serving {persona} v{version}")
    for name, where in server.endpoints(options).items():
        print(f"{name:>10}: {where}")


@app.command()
def chat(
    persona: Annotated[str, typer.Option("--persona", help="Persona (model) name.")],
    url: Annotated[Optional[str], typer.Option(help="Inference API (default: the local `persona serve`).")] = None,
    token_file: Annotated[Optional[Path], typer.Option(help="key_file.json or a file holding the token.")] = None,
    workdir: Annotated[Path, typer.Option(help="Workdir of the local `persona serve`.")] = Path(".persona/serve"),
    version: Annotated[Optional[str], typer.Option(help="Model version (default: the server's default).")] = None,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds per request.")] = 60,
) -> None:
    """Chat with a served persona; piped stdin gives one reply per line."""
    from persona_serving.chat import run_chat

    refused = run_chat(persona, url=url, token_file=token_file, workdir=workdir, version=version, timeout=timeout)
    if refused:
        sys.exit(1)


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
