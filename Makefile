# Every target creates .venv and installs repsuite into it when needed, so a fresh machine with only
# python3 and pip needs nothing else. The torch/torchvision pair is pinned through constraints.txt.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.repsuite-installed

.PHONY: install demo demo-nlq demo-faceswap serve browser test test-fast lint bench bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

# The main job on built-in synthetic data in the real on-disk formats, both tasks:
# NLQ (official Ego4D layout): write the data, train the demo model (a few minutes on CPU), predict val,
# and print the official R@k table next to a random-window baseline on the same queries.
# Face swapping (VGGFace2-HQ / FFHQ layouts): train an identity encoder, an independent judge (another
# network, data and run), a face-reconstruction network (shape-aware identity), the swapper, then score its swaps on held-out identities — whose identity the
# judge sees, pose / expression errors, PSNR against the ground-truth swaps — and write a grid PNG.
demo: demo-nlq demo-faceswap

demo-nlq: $(STAMP)
	$(BIN)/repsuite nlq synth data/synthetic_ego4d
	$(BIN)/repsuite fit --config configs/nlq/demo.yaml
	$(BIN)/repsuite nlq submit outputs/nlq_demo/checkpoints/last.ckpt --split val -o outputs/nlq_demo/val_pred.json
	$(BIN)/repsuite nlq eval data/synthetic_ego4d/v2/annotations/nlq_val.json outputs/nlq_demo/val_pred.json \
		--random-baseline

demo-faceswap: $(STAMP)
	$(BIN)/repsuite faceswap synth data/synthetic_faces
	$(BIN)/repsuite fit --config configs/faceswap/idnet_demo.yaml
	$(BIN)/repsuite fit --config configs/faceswap/judge_demo.yaml
	$(BIN)/repsuite fit --config configs/faceswap/recon_demo.yaml
	$(BIN)/repsuite fit --config configs/faceswap/demo.yaml
	$(BIN)/repsuite faceswap eval data/synthetic_faces/pairs --ckpt outputs/faceswap_demo/checkpoints/last.ckpt \
		--id-judge outputs/faceswap_judge/checkpoints/last.ckpt \
		--json outputs/faceswap_demo/eval.json --grid outputs/faceswap_demo/swap_grid.png

# Kernel benchmark, quick shapes (`make bench` runs the full table the README reports).
bench-quick: $(STAMP)
	$(BIN)/python benchmarks/ops.py --quick --out benchmarks/results/ops_quick.json

# The web page on the demo checkpoints (after `make demo`): http://127.0.0.1:7860
serve: $(STAMP)
	$(BIN)/repsuite serve --nlq-ckpt outputs/nlq_demo/checkpoints/last.ckpt \
		--faceswap-ckpt outputs/faceswap_demo/checkpoints/last.ckpt

# The browser tests drive Debian's Chromium (Playwright cannot download browsers here): install it when it
# is missing and this machine can (root with apt); otherwise those tests are skipped, and say so.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	{ if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for the browser tests (apt-get)"; \
		{ DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends chromium \
			|| { apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq \
			--no-install-recommends chromium; }; } >/dev/null 2>&1 \
			|| echo "could not install chromium: the browser tests will be skipped"; \
	else echo "no chromium (apt-get install chromium): the browser tests will be skipped"; fi; }

# The whole CPU suite, slow and browser tests (two-process DDP, CLI subprocess runs, the web page in
# headless Chromium) included; this is what CI runs.
test: $(STAMP) browser
	WANDB_MODE=offline $(BIN)/python -m pytest -m "not gpu" --durations=15

# Quick inner loop for development: skips the slow tests.
test-fast: $(STAMP)
	WANDB_MODE=offline $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check repsuite tests benchmarks notebooks
	$(BIN)/ruff format --check repsuite tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/ops.py --out benchmarks/results/ops.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache lightning_logs wandb
