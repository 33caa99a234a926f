"""A fused folder's tokenizer is the base's, in the base's own transformers class: loading it runs no code of ours.

What transformers does with `AutoTokenizer.from_pretrained(DIR)` (5.x): it first reads `config.json` through
`AutoConfig`, and that config names our configuration class in `auto_map` (it must, for the model to load
with `trust_remote_code=True`), so a call that leaves `trust_remote_code` unset is asked "Do you wish to run
the custom code?" by `AutoConfig` whatever the tokenizer files say. Passing `trust_remote_code` either way
answers it; the tokenizer files name a transformers class and no `auto_map`, so the tokenizer itself never
needs remote code. These tests pin both halves in a fresh process without hf_embfuse, stdin closed.
"""

import json

import pytest

from hf_embfuse.build import fuse
from tests.fixtures_models import tiny_base
from tests.fixtures_tokenizers import make_bpe_tokenizer, make_unigram_tokenizer, make_wordpiece_tokenizer
from tests.fresh_process import run_without_hf_embfuse

FAMILIES = {
    "wordpiece": ("bert", make_wordpiece_tokenizer),
    "bpe": ("gpt2", make_bpe_tokenizer),
    "unigram": ("llama", make_unigram_tokenizer),
}
TEXT = "hello new york, the cat"

CHILD = r"""
import contextlib, io, json, sys
from transformers import AutoTokenizer
results = {}
for name, folder in json.loads(sys.argv[1]).items():
    for trust in (False, True, None):
        printed = io.StringIO()
        kwargs = {} if trust is None else {"trust_remote_code": trust}
        with contextlib.redirect_stdout(printed):  # input() writes its question here
            tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
        assert "hf_embfuse" not in type(tokenizer).__module__
        results[f"{name}/{trust}"] = {
            "class": type(tokenizer).__name__,
            "ids": tokenizer(sys.argv[2])["input_ids"],
            "asked": printed.getvalue(),
        }
with open(sys.argv[3], "w") as handle:
    json.dump(results, handle)
"""


def _fused_folder(tmp_path, family: str):
    arch, make_tokenizer = FAMILIES[family]
    tokenizer = make_tokenizer()
    base = tmp_path / f"{family}-base"
    tiny_base(arch, vocab_size=len(tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    out = (tmp_path / f"{family}-fused").resolve()
    fuse(str(base), [{"path": str(base), "projection": "identity"}]).save_pretrained(out)
    return out, tokenizer


@pytest.fixture(scope="module")
def fused_folders(tmp_path_factory):
    """Built once for the file: the tests only read the folders."""
    root = tmp_path_factory.mktemp("tokenizer-files")
    return {family: _fused_folder(root, family) for family in FAMILIES}


def test_tokenizer_files_name_a_transformers_class_and_no_remote_code(fused_folders):
    import transformers

    for family, (folder, _) in fused_folders.items():
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
        assert "auto_map" not in tokenizer_config, family
        assert hasattr(transformers, tokenizer_config["tokenizer_class"]), family


def test_tokenizer_loads_in_a_fresh_process_without_being_asked(fused_folders, tmp_path):
    result_file = (tmp_path / "tokenizers.json").resolve()
    folders = {family: str(folder) for family, (folder, _) in fused_folders.items()}
    run_without_hf_embfuse(
        CHILD, json.dumps(folders), TEXT, str(result_file), workdir=tmp_path / "child", timeout=120
    )
    results = json.loads(result_file.read_text())
    for family, (_, base_tokenizer) in fused_folders.items():
        want = base_tokenizer(TEXT)["input_ids"]
        for trust in (False, True):
            got = results[f"{family}/{trust}"]
            assert got["asked"] == "", (family, trust, got["asked"])
            assert got["ids"] == want, (family, trust)
        # Left unset, AutoConfig's question about config.json's auto_map comes (transformers' behaviour, see
        # the module docstring); with nothing to answer it the load still ends, with the same tokenizer.
        bare = results[f"{family}/None"]
        assert bare["ids"] == want and bare["class"] == results[f"{family}/False"]["class"]
