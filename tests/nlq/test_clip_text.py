"""Frozen open_clip text tower: checkpoint loading, token states, the on-disk cache, CLI and DataModule use.

A tiny open_clip model config (registered from a JSON file, like any user-defined open_clip model) keeps
these tests fast; its state dict is open_clip's own key layout, written by the test.
"""

import json
import shutil

import pytest
import torch

from repsuite.nlq.annotations import load_nlq_annotations
from repsuite.nlq.clip_text import ClipTextTower, cache_text_features, default_cache_name
from repsuite.nlq.datamodule import Ego4DNLQDataModule
from repsuite.nlq.features import FeatureError
from tests.conftest import ROOT

DATA = ROOT / "tests/data/ego4d_nlq"
FEATS = ["slowfast8x8_r101_k400", "clip_vitb16"]
TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 24, "heads": 2, "layers": 2},
}


def _config(tmp_path, name="tiny-clip", width=24):
    cfg = json.loads(json.dumps(TINY))
    cfg["text_cfg"]["width"] = width
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return path


def _checkpoint(tmp_path, config, seed=0, name="clip.pt", wrap=None):
    import open_clip

    from repsuite.nlq.clip_text import resolve_clip_model

    torch.manual_seed(seed)
    model = open_clip.create_model(resolve_clip_model(str(config)), pretrained=None)
    state = model.state_dict()
    path = tmp_path / name
    if wrap == "ddp":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    elif wrap == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif wrap == "torchscript":
        ids = open_clip.get_tokenizer(resolve_clip_model(str(config)))(["a"])
        traced = torch.jit.trace_module(model.eval(), {"encode_text": (ids,)}, check_trace=False)
        torch.jit.save(traced, str(path))
    else:
        torch.save(state, path)
    return path, model.eval()


def test_token_states_are_the_ln_final_states_clip_pools(tmp_path):
    config = _config(tmp_path)
    ckpt, reference = _checkpoint(tmp_path, config)
    tower = ClipTextTower(str(config), str(ckpt))
    questions = ["Where did I put the cup?", "  what did i cut with the KNIFE "]
    states = tower(questions)
    ids, eot = tower.tokenize(questions)
    assert [s.shape for s in states] == [(int(e) + 1, 24) for e in eot]
    assert (ids[:, 0] == 49406).all() and (ids[torch.arange(2), eot] == 49407).all()
    # gathering the EOT state and projecting it must give CLIP's own pooled text embedding
    pooled = torch.stack([s[-1] for s in states]) @ reference.text_projection
    torch.testing.assert_close(pooled, reference.encode_text(ids), rtol=1e-4, atol=1e-5)
    # same question after normalisation -> same states; padding never leaks into the kept rows
    again = tower(["where did i put the cup"])[0]
    torch.testing.assert_close(again, states[0])


@pytest.mark.parametrize("wrap", ["ddp", "safetensors", "torchscript"])
def test_checkpoint_forms_load(tmp_path, wrap):
    config = _config(tmp_path)
    plain, _ = _checkpoint(tmp_path, config, seed=3)
    other, _ = _checkpoint(tmp_path, config, seed=3, name=f"clip_{wrap}.bin", wrap=wrap)
    a = ClipTextTower(str(config), str(plain))(["where is the cup?"])[0]
    b = ClipTextTower(str(config), str(other))(["where is the cup?"])[0]
    torch.testing.assert_close(a, b)


def test_random_init_is_refused_unless_asked(tmp_path):
    config = _config(tmp_path)
    with pytest.raises(ValueError, match="random_init=True"):
        ClipTextTower(str(config))
    assert ClipTextTower(str(config), random_init=True)(["x?"])[0].shape[1] == 24
    with pytest.raises(ValueError, match="clip_random_init=True"):
        Ego4DNLQDataModule(str(DATA), features=FEATS, text="clip", clip_model=str(config))


def test_mismatched_or_bad_checkpoints_are_named(tmp_path):
    config = _config(tmp_path)
    wide = _config(tmp_path, name="wide-clip", width=32)
    ckpt, _ = _checkpoint(tmp_path, wide)
    with pytest.raises(
        ValueError, match=r"clip.pt: does not match open_clip model 'tiny-clip' \(text tower\).*shape"
    ):
        ClipTextTower(str(config), str(ckpt))
    state = torch.load(ckpt, weights_only=True)
    del state["ln_final.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(ValueError, match=r"missing keys \['ln_final.weight'\].*\['extra.weight'\]"):
        ClipTextTower(str(wide), str(tmp_path / "broken.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pt: not a state dict"):
        ClipTextTower(str(config), str(tmp_path / "junk.pt"))
    with pytest.raises(ValueError, match="not an open_clip model name"):
        ClipTextTower("ViT-Q-99", str(ckpt))


def test_cache_is_written_once_and_tied_to_its_weights(tmp_path):
    config = _config(tmp_path)
    ckpt, _ = _checkpoint(tmp_path, config)
    queries = load_nlq_annotations(DATA / "v2/annotations/nlq_val.json").queries
    tower = ClipTextTower(str(config), str(ckpt))
    out = tmp_path / "cache"
    assert cache_text_features(queries, out, tower, batch_size=3) == {"written": len(queries), "cached": 0}
    q = queries[0]
    first = torch.load(out / f"{q.annotation_uid}_{q.query_idx}.pt", weights_only=True)
    torch.testing.assert_close(first, tower([q.query])[0])
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "tiny-clip" and len(manifest["checkpoint_sha256"]) == 64
    assert cache_text_features(queries, out, tower) == {"written": 0, "cached": len(queries)}
    assert not list(out.glob(".*.tmp"))
    other, _ = _checkpoint(tmp_path, config, seed=1, name="other.pt")
    with pytest.raises(FeatureError, match=r"manifest\.json: this text-feature cache was made differently"):
        cache_text_features(queries, out, ClipTextTower(str(config), str(other)))
    counts = cache_text_features(queries, out, ClipTextTower(str(config), str(other)), overwrite=True)
    assert counts["written"] == len(queries)


def _clip_download(tmp_path):
    """A copy of the test download and the DataModule arguments of a frozen tiny CLIP text tower."""
    config = _config(tmp_path)
    ckpt, _ = _checkpoint(tmp_path, config)
    root = tmp_path / "ego4d"
    shutil.copytree(DATA, root)
    return (
        root,
        config,
        {"features": FEATS, "text": "clip", "clip_model": str(config), "clip_checkpoint": str(ckpt)},
    )


def test_datamodule_clip_text_caches_and_feeds_the_model(tmp_path):
    root, config, clip = _clip_download(tmp_path)
    dm = Ego4DNLQDataModule(str(root), **clip, batch_size=2)
    assert dm.text_dim == 24 and dm.text_features == default_cache_name(str(config)) == "clip_text_tiny_clip"
    dm.prepare_data()
    cache = root / "v2/clip_text_tiny_clip"
    n_files = len(list(cache.glob("*_*.pt")))
    total = sum(
        len(load_nlq_annotations(root / "v2/annotations" / f).queries)
        for f in ("nlq_train.json", "nlq_val.json", "nlq_test_unannotated.json")
    )
    assert n_files == total
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["text"].shape[0] == 2 and batch["text"].shape[2] == 24
    norms = batch["text"].norm(dim=-1)[~batch["text_padding_mask"]]
    torch.testing.assert_close(norms, torch.ones_like(norms))  # tokens L2-normalised, as in the release


@pytest.mark.slow
def test_extract_text_cli_then_fit_reads_the_files(tmp_path, in_tmp):
    from repsuite.cli import main, run_cli

    config = _config(tmp_path)
    ckpt, _ = _checkpoint(tmp_path, config)
    root = tmp_path / "ego4d"
    shutil.copytree(DATA, root)
    anns = [str(root / "v2/annotations" / f) for f in ("nlq_train.json", "nlq_val.json")]
    out = root / "v2/my_clip_text"
    args = ["nlq", "extract-text", *anns, "-o", str(out), "--model", str(config), "--checkpoint", str(ckpt)]
    assert main(args) == 0
    assert main([*args[:-2], "--random-init"]) == 1  # a cache made by real weights is not mixed with others
    tiny_fit = [
        "fit",
        "--model=NLQModule",
        "--model.hidden=16",
        "--model.num_heads=2",
        "--model.ffn=32",
        "--model.span_layers=1",
        "--data=Ego4DNLQDataModule",
        f"--data.root={root}",
        f"--data.features=[{','.join(FEATS)}]",
        "--data.batch_size=4",
        "--trainer.fast_dev_run=1",
        "--trainer.accelerator=cpu",
    ]
    cli = run_cli([*tiny_fit, "--data.text=features", "--data.text_features=my_clip_text"])
    assert cli.model.hparams.text_dim == 24
    # the frozen tower straight from the config: the trainer's prepare_data fills the cache first
    text = ["--data.text=clip", f"--data.clip_model={config}", f"--data.clip_checkpoint={ckpt}"]
    cli = run_cli([*tiny_fit, *text])
    assert cli.model.hparams.text_dim == 24 and (root / "v2/clip_text_tiny_clip/manifest.json").exists()


def test_datamodule_refuses_a_complete_cache_made_by_other_weights(tmp_path):
    config = _config(tmp_path)
    a, _ = _checkpoint(tmp_path, config, seed=0, name="a.pt")
    b, _ = _checkpoint(tmp_path, config, seed=1, name="b.pt")
    root = tmp_path / "ego4d"
    shutil.copytree(DATA, root)
    kw = {"features": FEATS, "text": "clip", "clip_model": str(config)}
    Ego4DNLQDataModule(str(root), clip_checkpoint=str(a), **kw).prepare_data()
    Ego4DNLQDataModule(str(root), clip_checkpoint=str(a), **kw).prepare_data()  # complete: nothing to do
    with pytest.raises(FeatureError, match="made differently"):
        Ego4DNLQDataModule(str(root), clip_checkpoint=str(b), **kw).prepare_data()


def test_sharded_cache_equals_files_resumes_and_keeps_its_shard_count(tmp_path):
    from repsuite.nlq.text_store import TextFeatureStore, query_key

    config = _config(tmp_path)
    ckpt, _ = _checkpoint(tmp_path, config)
    tower = ClipTextTower(str(config), str(ckpt))
    queries = [
        q
        for f in ("nlq_train.json", "nlq_val.json")
        for q in load_nlq_annotations(DATA / "v2/annotations" / f).queries
    ]
    keys = [query_key(q.annotation_uid, q.query_idx) for q in queries]
    files, shards = tmp_path / "files", tmp_path / "shards"
    assert cache_text_features(queries, files, tower)["written"] == len(set(keys))
    # a build killed after the first half of the queries: its finished shards are kept
    half = len(queries) // 2
    first = cache_text_features(queries[:half], shards, tower, batch_size=2, shard_size=4)
    n_shards = json.loads((shards / "manifest.json").read_text())["num_shards"]
    assert n_shards == -(-len({*keys[:half]}) // 4) and first["written"] == len({*keys[:half]})
    again = cache_text_features(queries, shards, tower, batch_size=2, shard_size=4)
    assert again == {"written": len(set(keys)) - len({*keys[:half]}), "cached": len({*keys[:half]})}
    # the shard count is the first build's: queries added later land in the shards they hash to
    assert json.loads((shards / "manifest.json").read_text())["num_shards"] == n_shards
    # no shard size given (e.g. a config without it): a sharded folder stays sharded
    assert cache_text_features(queries, shards, tower) == {"written": 0, "cached": len(set(keys))}
    assert len(list((shards / "shards").glob("*.pt"))) <= n_shards and not list(shards.rglob(".*.tmp"))
    a, b = TextFeatureStore(files), TextFeatureStore(shards)
    assert (a.layout, b.layout) == ("files", "shards")
    for key in keys:
        torch.testing.assert_close(b.get(key), a.get(key))
        assert b.path(key).parent.name == "shards"
    with pytest.raises(FeatureError, match=r"shards/\d{5}\.pt: text features of query 'nope_0' not found"):
        b.get("nope_0")
    with pytest.raises(FeatureError, match=r"files/manifest\.json: this cache holds its queries as 'files'"):
        cache_text_features(queries, files, tower, shard_size=4)
    from repsuite.cli import main  # the same from the command line

    ann, cli_out = str(DATA / "v2/annotations/nlq_val.json"), tmp_path / "cli"
    args = ["nlq", "extract-text", ann, "-o", str(cli_out), "--model", str(config), "--checkpoint", str(ckpt)]
    assert main([*args, "--shard-size", "8"]) == 0
    assert TextFeatureStore(cli_out).layout == "shards" and not list(cli_out.glob("*_*.pt"))
    (shards / "manifest.json").write_text(json.dumps({"layout": "shards", "num_shards": "many"}))
    with pytest.raises(FeatureError, match=r"manifest\.json: field 'layout' / 'num_shards'.*positive int"):
        TextFeatureStore(shards)


def test_datamodule_trains_on_a_naq_file_from_a_sharded_clip_cache(tmp_path):
    from repsuite.nlq.naq import build_naq
    from repsuite.nlq.text_store import TextFeatureStore, query_key

    root, _, clip = _clip_download(tmp_path)
    naq, counts = build_naq(root, "v2", "train")
    assert counts["kept"] > 0
    (root / "v2/annotations/naq_train.json").write_text(json.dumps(naq))
    dm = Ego4DNLQDataModule(
        str(root), **clip, clip_cache_shard_size=16, train_files=["naq_train.json"], batch_size=4
    )
    dm.prepare_data()
    cache = root / "v2/clip_text_tiny_clip"
    assert not list(cache.glob("*_*.pt")) and list((cache / "shards").glob("*.pt"))
    store = TextFeatureStore(cache)
    naq_queries = load_nlq_annotations(root / "v2/annotations/naq_train.json").queries
    assert all(store.has(query_key(q.annotation_uid, q.query_idx)) for q in naq_queries)
    assert dm.text_dim == 24
    dm.setup("fit")
    ds = dm.dataset("train")
    nlq = load_nlq_annotations(root / "v2/annotations/nlq_train.json").queries
    assert len(ds) == counts["kept"] + len(nlq)
    batch = next(iter(dm.train_dataloader()))
    assert batch["text"].shape[0] == 4 and batch["text"].shape[2] == 24
    # a second prepare_data finds everything cached and does not build the tower
    mtime = {p: p.stat().st_mtime_ns for p in (cache / "shards").glob("*.pt")}
    dm.prepare_data()
    assert {p: p.stat().st_mtime_ns for p in (cache / "shards").glob("*.pt")} == mtime
