"""NLQRecall (tensor, DDP-safe) equals the official-semantics evaluator on thousands of random entries."""

import math
import random

import pytest
import torch

from repsuite.nlq import evaluate_nlq
from repsuite.nlq.metrics import NLQRecall, window_iou

THRESHOLDS, TOP_K = (0.01, 0.3, 0.5), (1, 3, 5)


def _random_case(seed: int, n_queries: int = 3000, point_gt: bool = True):
    rng = random.Random(seed)
    videos, entries, keys = [], [], []
    q = 0
    while q < n_queries:
        clip_uid = f"clip{len(videos)}"
        anns = []
        for a in range(rng.randint(1, 4)):
            queries = []
            for _ in range(rng.randint(1, 6)):
                s = round(rng.uniform(0, 480), 2)
                length = (
                    0.0 if (point_gt and rng.random() < 0.05) else max(0.05, round(rng.expovariate(1 / 8), 2))
                )
                queries.append({"clip_start_sec": s, "clip_end_sec": s + length, "query": "q?"})
            anns.append({"annotation_uid": f"{clip_uid}_a{a}", "language_queries": queries})
            q += len(queries)
        videos.append(
            {"video_uid": f"v{len(videos)}", "clips": [{"clip_uid": clip_uid, "annotations": anns}]}
        )
    gt = {"version": "2.0", "videos": videos}
    for video in videos:
        for clip in video["clips"]:
            for ann in clip["annotations"]:
                for qi, query in enumerate(ann["language_queries"]):
                    g0, g1 = query["clip_start_sec"], query["clip_end_sec"]
                    windows = []
                    for _ in range(rng.randint(1, 7)):  # fewer and more than K
                        kind = rng.random()
                        if kind < 0.15:
                            s = rng.uniform(0, 480)
                            w = [s, s]  # zero-length
                        elif kind < 0.25:
                            s = rng.uniform(0, 480)
                            w = [s + rng.uniform(0.1, 20), s]  # reversed
                        elif kind < 0.45:
                            w = [g0 + rng.uniform(-3, 3), g1 + rng.uniform(-3, 3)]  # near the GT
                        elif kind < 0.5:
                            w = [g0, g1]  # exact (point-on-point gives NaN when the GT is a point)
                        else:
                            s = rng.uniform(0, 480)
                            w = [s, s + rng.expovariate(1 / 10)]  # mostly disjoint
                        windows.append(w)
                    entries.append(
                        {
                            "clip_uid": clip["clip_uid"],
                            "annotation_uid": ann["annotation_uid"],
                            "query_idx": qi,
                            "predicted_times": windows,
                        }
                    )
                    keys.append((g0, g1))
    return gt, entries, keys


def _metric_from_entries(entries, keys, ids=None, batch=97, **kw):
    metric = NLQRecall(THRESHOLDS, TOP_K, **kw)
    kmax = 7
    for start in range(0, len(entries), batch):
        chunk = entries[start : start + batch]
        windows = torch.zeros(len(chunk), kmax, 2, dtype=torch.float64)
        n = torch.tensor([len(e["predicted_times"]) for e in chunk])
        for i, e in enumerate(chunk):
            windows[i, : len(e["predicted_times"])] = torch.tensor(e["predicted_times"], dtype=torch.float64)
        gt = torch.tensor(keys[start : start + batch], dtype=torch.float64)
        qid = torch.tensor(ids[start : start + batch]) if ids is not None else None
        metric.update(windows, gt, query_ids=qid, num_windows=n)
    return metric.compute()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metric_equals_official_semantics_on_random_predictions(seed):
    gt, entries, keys = _random_case(seed, point_gt=False)
    ref = evaluate_nlq(entries, gt, THRESHOLDS, TOP_K)
    got = _metric_from_entries(entries, keys)
    assert int(got["evaluated"]) == ref.num_evaluated == len(entries) >= 3000
    for t in THRESHOLDS:
        for k in TOP_K:
            hits_ref = round(ref.recall[(t, k)] * ref.num_evaluated)
            hits_got = round(got[f"R@{k}_IoU{t:g}"].item() * ref.num_evaluated)
            assert hits_got == hits_ref, (t, k)  # the same entries are hits, not just close averages
    assert got["mIoU"].item() == pytest.approx(ref.mean_iou, rel=1e-12)


def test_nan_cases_match_too():
    gt, entries, keys = _random_case(7, n_queries=1500, point_gt=True)
    ref = evaluate_nlq(entries, gt, THRESHOLDS, TOP_K)
    got = _metric_from_entries(entries, keys)
    for t in THRESHOLDS:
        for k in TOP_K:
            assert got[f"R@{k}_IoU{t:g}"].item() == pytest.approx(ref.recall[(t, k)], rel=1e-12)
    assert math.isnan(ref.mean_iou) == math.isnan(got["mIoU"].item())


def test_strict_and_duplicates_match():
    gt, entries, keys = _random_case(3, n_queries=600, point_gt=False)
    ids = list(range(len(entries)))
    # drop 50 queries, duplicate 20 others
    keep = list(range(50, len(entries))) + list(range(100, 120))
    e2, k2, i2 = [entries[i] for i in keep], [keys[i] for i in keep], [ids[i] for i in keep]
    with pytest.warns(UserWarning, match="duplicate"):
        ref = evaluate_nlq(e2, gt, THRESHOLDS, TOP_K, strict=True)
    got = _metric_from_entries(e2, k2, ids=i2, strict=True, num_queries=len(entries))
    assert int(got["missing"]) == ref.num_missing == 50
    assert int(got["duplicates"]) == ref.num_duplicates == 20
    for t in THRESHOLDS:
        for k in TOP_K:
            assert got[f"R@{k}_IoU{t:g}"].item() == pytest.approx(ref.recall[(t, k)], rel=1e-12)
    assert got["mIoU"].item() == pytest.approx(ref.mean_iou, rel=1e-12)
    with pytest.warns(UserWarning, match="duplicate"):
        official = evaluate_nlq(e2, gt, THRESHOLDS, TOP_K)
    with pytest.warns(UserWarning, match="counted twice"):
        got = _metric_from_entries(e2, k2, ids=i2)
    assert got["R@1_IoU0.3"].item() == pytest.approx(official.recall[(0.3, 1)], rel=1e-12)


def test_window_iou_matches_hand_values():
    w = torch.tensor([[[3.0, 5.0], [0.0, 1.0], [5.0, 3.0], [4.0, 4.0]]])
    iou = window_iou(w, torch.tensor([[2.0, 6.0]]))
    assert iou.tolist() == [[0.5, 0.0, 0.0, 0.0]]
    assert torch.isnan(window_iou(torch.tensor([[[3.0, 3.0]]]), torch.tensor([[3.0, 3.0]]))).all()


def test_bad_input():
    m = NLQRecall()
    with pytest.raises(ValueError, match=r"`windows` must be \(B, K, 2\)"):
        m.update(torch.zeros(2, 5), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"`gt` must be \(2, 2\)"):
        m.update(torch.zeros(2, 5, 2), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="at least one window"):
        m.update(torch.zeros(2, 5, 2), torch.zeros(2, 2), num_windows=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="needs `num_queries`"):
        NLQRecall(strict=True)
    with pytest.raises(ValueError, match="`query_ids` is required"):
        NLQRecall(deduplicate=True).update(torch.zeros(1, 1, 2), torch.zeros(1, 2))


def _ddp_worker(rank, world, port, entries, keys, ids, out_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        # interleaved shards, like a DistributedSampler; the last id is repeated to even out the shards
        mine = list(range(rank, len(entries), world))
        if rank == world - 1 and len(entries) % world:
            mine.append(0)
        res = _metric_from_entries(
            [entries[i] for i in mine], [keys[i] for i in mine], ids=[ids[i] for i in mine], deduplicate=True
        )
        if rank == 0:
            torch.save({k: v.item() for k, v in res.items()}, out_path)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_metric_syncs_across_two_processes(tmp_path):
    import socket

    import torch.multiprocessing as mp

    gt, entries, keys = _random_case(11, n_queries=401, point_gt=False)
    entries, keys = entries[:401], keys[:401]  # odd count: the sampler-style padding duplicates one entry
    ids = list(range(len(entries)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "res.pt"
    mp.spawn(_ddp_worker, args=(2, port, entries, keys, ids, str(out)), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    ref = evaluate_nlq(entries, gt, THRESHOLDS, TOP_K)
    assert got["evaluated"] == len(entries) and got["duplicates"] == 1
    for t in THRESHOLDS:
        for k in TOP_K:
            assert got[f"R@{k}_IoU{t:g}"] == pytest.approx(ref.recall[(t, k)], rel=1e-12)
    assert got["mIoU"] == pytest.approx(ref.mean_iou, rel=1e-12)
