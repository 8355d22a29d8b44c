"""Deterministically generate the tiny Llama that the reference stack's real vLLM serves (no hub downloads).

Run with the engine venv, which has torch / transformers / tokenizers (`make vllm` installs it):

    .venv-vllm/bin/python reference-stack/model_build.py --out .forge/models/tiny-llama

or through `forge stack model build`. The module imports only the standard library at top level, so the main
Forge venv can import its constants and `read_manifest` without torch.

Determinism: the tokenizer is a byte-level BPE trained on a fixed, sorted list of standard-library files; the
weights come from a fixed seed. `MANIFEST_NAME` records the sha256 of every output file plus the inputs that
determine them (the corpus files' hashes and the library versions), so two builds can be compared file by file.
The corpus is the running interpreter's standard library: another Python patch release may change the
tokenizer (the manifest shows which corpus file differs); the weights depend only on the seed and torch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

DEFAULT_MODEL_DIR = Path(".forge/models/tiny-llama")
MANIFEST_NAME = "forge-manifest.json"
SEED = 20261123

# Geometry from ../shared/notes/vllm-cpu.md. head_dim = 128 / 4 = 32, so KV bytes per token in bf16 are
# 2 (K and V) * 2 layers * 2 kv heads * 32 * 2 bytes = 512 — the figure the capacity model is checked against.
VOCAB_SIZE = 2048
HIDDEN_SIZE = 128
INTERMEDIATE_SIZE = 256
NUM_HIDDEN_LAYERS = 2
NUM_ATTENTION_HEADS = 4
NUM_KEY_VALUE_HEADS = 2
MAX_POSITION_EMBEDDINGS = 2048

BOS, EOS, PAD = "<s>", "</s>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = [BOS, EOS, PAD, *ROLE_TOKENS]  # ids 0..5, in this order
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

# Standard-library files present, with these paths, in CPython 3.11 through 3.13 (no modules that became
# packages in that range, e.g. zipfile, pathlib). Sorted, so the training order never depends on the disk.
CORPUS_FILES = sorted([
    "argparse.py", "ast.py", "base64.py", "bisect.py", "calendar.py", "collections/__init__.py",
    "configparser.py", "contextlib.py", "copy.py", "csv.py", "dataclasses.py", "datetime.py", "difflib.py",
    "enum.py", "fractions.py", "functools.py", "gettext.py", "glob.py", "heapq.py", "inspect.py",
    "json/decoder.py", "json/encoder.py", "logging/__init__.py", "os.py", "pprint.py", "random.py",
    "shutil.py", "statistics.py", "string.py", "subprocess.py", "tempfile.py", "textwrap.py", "threading.py",
    "typing.py", "uuid.py",
])


class BuildError(Exception):
    """A problem the user can fix; printed as one line."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_tree(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory` except the manifest, keyed by relative POSIX path."""
    return {
        p.relative_to(directory).as_posix(): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


def read_manifest(model_dir: Path) -> dict | None:
    """The manifest of a finished build, or None when `model_dir` holds none (absent or interrupted build)."""
    try:
        return json.loads((Path(model_dir) / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def verify(model_dir: Path) -> list[str]:
    """Problems found comparing the files on disk with the manifest; empty when the build is intact."""
    manifest = read_manifest(model_dir)
    if manifest is None:
        return [f"{model_dir}: no {MANIFEST_NAME} — build the model first"]
    on_disk, recorded = hash_tree(Path(model_dir)), manifest["files"]
    problems = [f"{name}: missing" for name in sorted(set(recorded) - set(on_disk))]
    problems += [f"{name}: not in the manifest" for name in sorted(set(on_disk) - set(recorded))]
    problems += [f"{name}: sha256 differs" for name in sorted(set(on_disk) & set(recorded))
                 if on_disk[name] != recorded[name]]
    return problems


def run_build(python: Path, out_dir: Path, timeout_s: float = 600.0) -> int:
    """Run this script with `python` (the engine venv's, which has torch) and return its exit code.
    Raises subprocess.TimeoutExpired after `timeout_s` (a build takes about 10 s)."""
    command = [str(python), str(Path(__file__).resolve()), "--out", str(out_dir)]
    return subprocess.run(command, stdin=subprocess.DEVNULL, timeout=timeout_s).returncode


def ensure_built(python: Path, out_dir: Path, timeout_s: float = 600.0) -> Path:
    """`out_dir` holding an intact build: kept if its files match its manifest, else (re)built."""
    if verify(out_dir):
        code = run_build(python, out_dir, timeout_s)
        if code != 0 or verify(out_dir):
            raise BuildError(f"building {out_dir} with {python} failed (exit {code})")
    return Path(out_dir)


def corpus_paths() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = [stdlib / name for name in CORPUS_FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise BuildError(f"tokenizer corpus: standard-library file(s) not found: {', '.join(missing)} — "
                         "run with a full CPython 3.11+ install")
    return paths


def train_tokenizer(corpus: list[Path]):
    """Byte-level BPE, wrapped as a transformers fast tokenizer with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no unknown tokens
        show_progress=False,
    )
    tokenizer.train([str(p) for p in corpus], trainer=trainer)
    if tokenizer.get_vocab_size() != VOCAB_SIZE:
        raise BuildError(f"tokenizer: trained vocab has {tokenizer.get_vocab_size()} tokens, expected "
                         f"{VOCAB_SIZE} — the corpus is too small")
    bos_id = tokenizer.token_to_id(BOS)
    # Like Llama: encoding with special tokens prepends BOS.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS), model_max_length=MAX_POSITION_EMBEDDINGS,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def build_model(tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=HIDDEN_SIZE, intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=NUM_HIDDEN_LAYERS, num_attention_heads=NUM_ATTENTION_HEADS,
        num_key_value_heads=NUM_KEY_VALUE_HEADS, max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, dtype="bfloat16",
    )
    torch.manual_seed(SEED)
    # Initialise in float32 on CPU (deterministic for a given torch), then cast: the saved weights are bf16.
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.eval()
    return model


def build(out_dir: Path) -> dict:
    """Build into a temporary sibling directory, write the manifest last, then swap it into place, so
    `out_dir` only ever holds a complete build (the manifest marks completeness)."""
    out_dir = Path(out_dir)
    # The build replaces out_dir: only ever a previous build (it has a manifest) or an empty directory, never
    # a directory of the user's that --out happened to name.
    if out_dir.exists() and not (out_dir.is_dir() and (read_manifest(out_dir) is not None
                                                       or not any(out_dir.iterdir()))):
        raise BuildError(f"--out {out_dir}: exists and is not a model build — choose another directory or "
                         "remove it")

    import tokenizers
    import torch
    import transformers

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers.utils.logging.disable_progress_bar()  # a one-shard "Writing model shards" bar is noise
    torch.use_deterministic_algorithms(True)
    corpus = corpus_paths()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        tokenizer = train_tokenizer(corpus)
        model = build_model(tokenizer)
        tokenizer.save_pretrained(staging)
        model.save_pretrained(staging, safe_serialization=True)
        manifest = {
            "name": out_dir.name,
            "seed": SEED,
            "files": hash_tree(staging),
            "inputs": {
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__,
                "corpus": {name: sha256_file(p) for name, p in zip(CORPUS_FILES, corpus)},
            },
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                                             encoding="utf-8")
        # mkdtemp makes the directory 0700 and safetensors writes 0600: make the build readable like any other.
        staging.chmod(0o755)
        for path in staging.iterdir():
            path.chmod(0o644)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the reference stack's tiny Llama deterministically.")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR,
                        help=f"output directory (default {DEFAULT_MODEL_DIR})")
    parser.add_argument("--verify", action="store_true",
                        help="check an existing build against its manifest instead of building")
    args = parser.parse_args(argv)
    try:
        if args.verify:
            problems = verify(args.out)
            for problem in problems:
                print(f"model_build: {args.out}: {problem}", file=sys.stderr)
            return 1 if problems else 0
        manifest = build(args.out)
    except BuildError as exc:
        print(f"model_build: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"model_build: error: {exc.name} is not importable — run with .venv-vllm/bin/python "
              "(`make vllm` installs it)", file=sys.stderr)
        return 2
    print(f"built {args.out} ({len(manifest['files'])} files, manifest {args.out / MANIFEST_NAME})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
