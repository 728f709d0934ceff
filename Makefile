# personafleet: `make demo` runs the whole pipeline on the embedded defaults; `make test` runs the tests;
# `make bench` runs every benchmark with quick settings (each script's --help gives the full ones).
VENV  := .venv
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	bash scripts/demo.sh

test:
	PERSONA_WITH_POSTGRES=1 bash scripts/setup.sh
	$(VENV)/bin/pytest

# Quick settings: every script and its baseline run once, on smaller sizes than the scripts' defaults.
# The README's figures come from the scripts' defaults (the commands are in docs/<part>.md).
BENCH_OUT := .persona/bench
bench: $(STAMP)
	PERSONA_WITH_POSTGRES=1 bash scripts/setup.sh
	$(VENV)/bin/python benchmarks/prepare.py --sizes 10000 --baseline-max 10000
	$(VENV)/bin/python benchmarks/training.py --steps 10 --results $(BENCH_OUT)
	$(VENV)/bin/python benchmarks/serving.py --concurrency 1 4 --requests-per-client 2 --results $(BENCH_OUT)
	$(VENV)/bin/python benchmarks/serving.py --open-loop --rates 2 --seconds 5 --bot-messages 2 --results $(BENCH_OUT)
	$(VENV)/bin/python benchmarks/bot.py --rates 50 200 --seconds 2
	$(VENV)/bin/python benchmarks/operator.py --trials 1 --canary-trials 1 --chats 8 --results $(BENCH_OUT)
	$(VENV)/bin/python benchmarks/fleet.py --shapes t5-small --slots-shape t5-small --ks 1 4 --threads 1 --new-tokens 4 --repeats 1 --clients 4 --requests-per-client 2 --results $(BENCH_OUT)
	$(VENV)/bin/python benchmarks/knowledge.py --retrieval-only --results $(BENCH_OUT)
	$(VENV)/bin/python benchmarks/fidelity.py --quick --results $(BENCH_OUT)
	test -f .persona/asr/report.json || $(VENV)/bin/persona init-asr --out .persona/asr
	$(VENV)/bin/python benchmarks/asr.py --model .persona/asr --repeats 1 --out $(BENCH_OUT)/asr.json

clean:
	rm -rf .persona build *.egg-info
