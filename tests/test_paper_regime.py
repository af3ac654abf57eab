"""The paper-regime study's bookkeeping, without training: selection reads val only, test is read after
every selection, the statistics against hand-computed values, reuse only on matching hashes, the
output schema of issue 21, and the gradient-ratio centring of the weight grids."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import _study as S
from benchmarks import paper_regime as P

DESIGN = {"segmentation": P.DESIGNS["segmentation"]}
NORMS = {
    "base": 2.0,
    "akd-k1-batchnorm": 20.0,
    "akd-k1-relative": 2.0,
    "akd-k4-batchnorm": 10.0,
    "akd-k4-relative": 4.0,
}


def fake_backend(val_of, test_of, teacher_val: float = 0.6) -> P.Backend:
    be = P.Backend(
        teacher=lambda task: teacher_val,
        grad_norm=lambda task, arm: NORMS[arm],
        train=lambda key: val_of(key),
        test=lambda key: test_of(key),
        teacher_test=lambda task: 0.61,
    )
    return be


def _val(key: P.RunKey) -> float:
    """val prefers the middle weight of every grid (no edge to extend), and akd-k4-relative over the other
    AKD arms."""
    if key.arm == "student" or key.weight is None:
        return 0.40
    grid = P.grid(P.centres(DESIGN["segmentation"], NORMS)[key.arm])
    bonus = 0.02 if key.arm == "akd-k4-relative" else 0.0
    return 0.50 + bonus - 0.01 * abs(grid.index(key.weight) - 1) + key.seed / 1000


def _test(key: P.RunKey) -> float:
    """test would prefer the largest weights and akd-k1-relative: a leak would show."""
    if key.arm == "student" or key.weight is None:
        return 0.41
    grid = P.grid(P.centres(DESIGN["segmentation"], NORMS)[key.arm])
    bonus = 0.05 if key.arm == "akd-k1-relative" else 0.002 * (key.seed % 3) if key.arm == "akd-k4-relative" else 0.0
    return 0.50 + bonus + 0.01 * math.log(key.weight / grid[0], 3) + key.seed / 1000


def test_selection_reads_val_only_and_test_is_read_after_it_is_final():
    be = fake_backend(_val, _test)
    res = P.run_study(DESIGN, be, (0, 1, 2), tuple(range(10)))
    kinds = [k for k, _ in be.events]
    assert "test" in kinds
    assert kinds.index("test") > kinds.index("selected"), "a test read happened before selection was final"
    assert all(k in ("test", "teacher-test") for k in kinds[kinds.index("test") :])
    assert kinds.index("teacher-test") > kinds.index("selected")  # the teacher's test too
    # stage 1: student + 5 distilled arms x 3 weights, 3 seeds; all val
    assert kinds[: kinds.index("selected")].count("val") == 3 * (1 + 5 * 3)
    sel = res.selected["segmentation"]
    grids = res.grids["segmentation"]
    assert all(sel[arm] == grids[arm][1] for arm in grids)  # val's choice (the middle), not test's
    assert res.best_other["segmentation"] == "akd-k4-relative"  # val's choice, not test's akd-k1-relative
    test = [r for r in res.records if r.split == "test"]
    assert {r.arm for r in test} == {"student", "base", P.REFERENCE, "akd-k4-relative"}
    assert len(test) == 4 * 10 and {r.seed for r in test} == set(range(10))
    assert all(r.loss_weight == sel[r.arm] for r in test)
    # stage 2 trained only the 7 new seeds of the 4 confirmed arms
    assert kinds[kinds.index("selected") :].count("val") == 4 * 7


def test_select_refuses_test_records_and_unfinished_grids():
    rec = [P.Record("seg", "cwd", "base", None, None, s, w, "val", "miou", w / 10) for s in (0, 1) for w in (1.0, 3.0)]
    chosen, _ = P.select(rec)
    assert chosen == {"seg": {"base": 3.0}}
    with pytest.raises(ValueError, match="may only read val"):
        P.select(rec + [P.Record("seg", "cwd", "base", None, None, 0, 1.0, "test", "miou", 0.9)])
    with pytest.raises(ValueError, match="different numbers of seeds"):
        P.select(rec[:-1])
    tie = [P.Record("seg", "cwd", "base", None, None, 0, w, "val", "miou", 0.5) for w in (1.0, 3.0)]
    assert P.select(tie)[0] == {"seg": {"base": 1.0}}  # ties: the smaller weight


def test_a_teacher_below_its_bar_on_val_stops_the_study_before_any_student():
    be = fake_backend(_val, _test, teacher_val=0.50)
    with pytest.raises(P.TeacherRejected, match="redesign it on val"):
        P.run_study(DESIGN, be, (0, 1, 2), tuple(range(10)))
    assert [k for k, _ in be.events] == ["teacher-val"]


def test_a_helper_trains_the_same_jobs_from_the_other_end_and_never_reads_test():
    main, helper = fake_backend(_val, _test), fake_backend(_val, _test)
    P.run_study(DESIGN, main, (0, 1, 2), tuple(range(10)))
    P.run_study(DESIGN, helper, (0, 1, 2), tuple(range(10)), train_only=True, reverse=True)
    assert not any(k in ("test", "teacher-test") for k, _ in helper.events)
    stage1 = lambda ev: [r for k, r in ev[: [k for k, _ in ev].index("selected")] if k == "val"]  # noqa: E731
    assert stage1(helper.events) == stage1(main.events)[::-1]


def test_an_arm_best_on_its_grid_edge_gets_the_next_weight_out_before_selection():
    centre = P.centres(DESIGN["segmentation"], NORMS)

    def val(key: P.RunKey) -> float:
        # base peaks two steps above its grid (2 extensions up, then still on the edge: reported);
        # akd-k1-relative one step below (that step, then one more to see it fall); the others in the middle
        if key.weight is None:
            return 0.40
        steps = round(math.log(key.weight / centre[key.arm], 3))
        peak = {"base": 3, "akd-k1-relative": -2}.get(key.arm, 0)
        return 0.50 - 0.01 * abs(steps - peak) + key.seed / 1000

    be = fake_backend(val, _test)
    res = P.run_study(DESIGN, be, (0, 1, 2), tuple(range(10)))
    kinds = [k for k, _ in be.events]
    assert kinds[: kinds.index("selected")].count("val") == 3 * (1 + 5 * 3 + 4)  # 4 extensions x 3 seeds
    assert [(a, w) for _, a, w in res.extended] == [
        ("base", pytest.approx(27.0)),
        ("akd-k1-relative", pytest.approx(1.0 / 3)),
        ("base", pytest.approx(81.0)),
        ("akd-k1-relative", pytest.approx(1.0 / 9)),
    ]
    assert res.grids["segmentation"]["base"] == pytest.approx([1.0, 3.0, 9.0, 27.0, 81.0])
    assert res.selected["segmentation"]["base"] == pytest.approx(81.0)  # still on the edge
    assert res.selected["segmentation"]["akd-k1-relative"] == pytest.approx(1.0 / 3)  # interior now
    doc = P.payload(res, DESIGN, (0, 1, 2), tuple(range(10)), {}, {})
    assert [(e["arm"], e["weight"]) for e in doc["design"]["best_on_grid_edge_after_extensions"]] == [
        ("base", pytest.approx(243.0))
    ]
    with pytest.raises(ValueError, match="only read val"):
        P.edge_extensions([r for r in res.records if r.split == "test"], res.grids)


def test_grid_is_centred_by_the_measured_gradient_ratio():
    c = P.centres(DESIGN["segmentation"], NORMS)  # base centre 3.0
    assert c == {
        "base": 3.0,
        "akd-k1-batchnorm": 0.3,  # gradient 10x base's: centre 10x smaller
        "akd-k1-relative": 3.0,
        "akd-k4-batchnorm": 0.6,
        "akd-k4-relative": 1.5,
    }
    assert P.grid(1.5) == [0.5, 1.5, 4.5]
    assert P.grid(3.0) == [1.0, 3.0, 9.0]
    assert all(b / a == pytest.approx(3) for a, b in zip(P.grid(0.37), P.grid(0.37)[1:], strict=False))
    with pytest.raises(ValueError, match="cannot centre"):
        P.centres(DESIGN["segmentation"], {**NORMS, "akd-k1-relative": 0.0})


def test_t_quantiles_interval_and_mde_against_hand_computed_values():
    # t quantiles (tables; SciPy 1.17: stats.t.ppf)
    assert S.t_quantile(0.975, 2) == pytest.approx(4.302652729749464, abs=1e-8)
    assert S.t_quantile(0.975, 9) == pytest.approx(2.262157162798205, abs=1e-8)
    assert S.t_quantile(0.975, 1) == pytest.approx(12.706204736174707, abs=1e-6)
    assert S.t_quantile(0.8, 9) == pytest.approx(0.883403859685543, abs=1e-8)
    assert S.t_quantile(0.025, 4) == pytest.approx(-2.7764451051977987, abs=1e-8)
    # paired differences 1, 2, 3 (x0.01): mean 0.02, sd 0.01, half-width t(0.975, 2) * 0.01 / sqrt(3)
    s = S.paired_summary([0.01, 0.03, 0.02])
    half = 4.302652729749464 * 0.01 / math.sqrt(3)
    assert s["mean"] == pytest.approx(0.02) and s["sd"] == pytest.approx(0.01) and s["wins"] == 3
    assert s["ci95"] == pytest.approx([0.02 - half, 0.02 + half])
    # MDE at 80% power: exact noncentral t (SciPy: brentq on stats.nct), the issue's 1.7 / 2.5 / 5.5 for 3 seeds
    assert S.mde(0.51, 3) == pytest.approx(1.6646622103467812, rel=1e-6)
    assert S.mde(0.76, 3) == pytest.approx(2.4806730977716756, rel=1e-6)
    assert S.mde(1.69, 3) == pytest.approx(5.516233598992277, rel=1e-6)
    assert S.paired_power(0.0, 1.0, 10) == pytest.approx(0.05, abs=1e-9)  # no effect: the test's level
    # for n = 10 the approximation (t_{.975,9} + t_{.8,9}) sd / sqrt(n) is within 1%
    approx = (2.262157162798205 + 0.883403859685543) / math.sqrt(10)
    assert S.mde(1.0, 10) == pytest.approx(approx, rel=0.01)
    assert S.paired_summary([0.02])["ci95"] is None  # one seed: no interval


def _result() -> P.StudyResult:
    be = fake_backend(_val, _test)
    return P.run_study(DESIGN, be, (0, 1, 2), tuple(range(10)))


def test_output_schema_is_exactly_the_issues():
    res = _result()
    doc = json.loads(json.dumps(P.payload(res, DESIGN, (0, 1, 2), tuple(range(10)), {}, {"this_call": 1.0})))
    assert doc["protocol"] == {
        "select_on": "val",
        "report_on": "test",
        "selection_seeds": [0, 1, 2],
        "confirmation_seeds": list(range(10)),
    }
    pair = doc["pairs"]["segmentation"]
    assert set(pair) == {"teacher", "student"}
    assert set(pair["teacher"]) == {"backbone", "pretrained", "metric", "val", "test"}
    assert pair["teacher"]["pretrained"] is True and pair["teacher"]["val"] == 0.6 and pair["teacher"]["test"] == 0.61
    assert set(pair["student"]) == {"backbone", "pretrained"} and pair["student"]["pretrained"] is True
    assert all(set(r) == set(P.RUN_FIELDS) for r in doc["runs"])
    assert set(P.RUN_FIELDS) == {
        "task", "base", "arm", "num_avatars", "uncertainty", "seed", "loss_weight", "split", "metric", "value"
    }  # fmt: skip
    assert {r["split"] for r in doc["runs"]} == {"val", "test"}
    assert all(
        set(r) == {"task", "base", "arm", "n", "test_mean", "test_std", "vs_base_mean", "vs_base_ci95", "wins", "mde80"}
        for r in doc["summary"]
    )
    akd = next(r for r in doc["summary"] if r["arm"] == "akd-k4-relative")
    diffs = P.paired(res.records, "segmentation", "akd-k4-relative")
    assert akd["n"] == 10 and akd["vs_base_mean"] == pytest.approx(sum(diffs) / 10)
    assert akd["vs_base_ci95"][0] < akd["vs_base_mean"] < akd["vs_base_ci95"][1]
    assert set(doc["answer"]["segmentation"]) == {"akd-k4-relative", P.REFERENCE}
    assert "95% CI" in doc["answer"]["segmentation"]["akd-k4-relative"]


def test_collapsed_runs_are_listed_with_their_cause():
    rec = [P.Record("seg", None, "student", None, None, s, None, "val", "miou", 0.4) for s in (0, 1)]
    rec.append(P.Record("seg", "cwd", "base", None, None, 0, 9.0, "val", "miou", 0.1))
    rec.append(P.Record("seg", "cwd", "base", None, None, 1, 9.0, "val", "miou", 0.3))
    cause = P._cause({"last_losses": {"loss_task": 0.5, "distill_total": 40.0}})
    out = P.collapsed(rec, {"seg-base-w9-s0": cause})
    assert [c["run"] for c in out] == ["seg-base-w9-s0"]
    assert "distillation term dominates" in out[0]["cause"]
    assert "non-finite" in P._cause({"diverged": "NaN at step 12"})


def _backend(tmp_path: Path, monkeypatch) -> tuple[P.RealBackend, list[str]]:
    settings = P.Settings(out=tmp_path / "out", records=tmp_path / "records")
    be = P.RealBackend(DESIGN, settings)
    trained: list[str] = []
    monkeypatch.setattr(be, "_run_hash", lambda key: "cfg-" + key.run_id)
    monkeypatch.setattr(be, "teacher_hash", lambda task: "teacher")

    def fake_train(name, overrides, run_dir, config_hash):
        trained.append(run_dir.name)
        return {"metrics": {"miou": 0.5}, "wall_seconds": 1.0}

    monkeypatch.setattr(be, "_train_dir", fake_train)
    return be, trained


def test_a_run_is_reused_only_when_config_and_source_hashes_match(tmp_path, monkeypatch):
    be, trained = _backend(tmp_path, monkeypatch)
    key = P.RunKey("segmentation", "base", 3.0, 0)
    assert be.train(key) == 0.5 and trained == [key.run_id]
    record = json.loads((tmp_path / "records" / f"{key.run_id}.json").read_text())
    assert record["config_hash"] == "cfg-" + key.run_id and record["source_hash"] == be.source_hash
    assert set(P.RUN_FIELDS) <= set(record)
    be.train(key)
    assert trained == [key.run_id]  # reused
    be.source_hash = "another avatarkd"
    be.train(key)
    assert trained == [key.run_id] * 2  # the source changed: retrained
    monkeypatch.setattr(be, "_run_hash", lambda k: "another config")
    be.train(key)
    assert trained == [key.run_id] * 3  # the config changed: retrained


def test_config_hash_ignores_paths_but_not_settings(tmp_path):
    be = P.RealBackend(DESIGN, P.Settings(out=tmp_path / "out", records=tmp_path / "records"))
    key = P.RunKey("segmentation", "akd-k4-relative", 1.5, 0)
    over = be.run_overrides(key)
    cfg = P._config("paper_seg_student.yaml", over)
    moved = P._config("paper_seg_student.yaml", [*over, "output_dir=/elsewhere", "distill.teacher_cache=/x"])
    assert be.config_hash(cfg, "t") == be.config_hash(moved, "t")
    other = P._config("paper_seg_student.yaml", [*over, "distill.akd.p=0.2"])
    assert be.config_hash(cfg, "t") != be.config_hash(other, "t")
    assert be.config_hash(cfg, "t") != be.config_hash(cfg, "another teacher")
    assert all(p.weight == 1.5 for p in cfg.distill.points)  # the study's weight reaches every point
    assert cfg.distill.akd.num_avatars == 4 and cfg.distill.akd.uncertainty == "relative"


def test_check_schema_accepts_the_payload_and_names_a_difference():
    res = _result()
    doc = json.loads(json.dumps(P.payload(res, DESIGN, (0, 1, 2), tuple(range(10)), {}, {})))
    P.check_schema(doc)
    doc["runs"][0]["extra"] = 1
    with pytest.raises(ValueError, match="runs row keys"):
        P.check_schema(doc)


@pytest.mark.slow
def test_smoke_runs_the_whole_pipeline_end_to_end():
    """About 6 min on 2 shared cores: teachers, gradient norms, both stages, test, docs and plot, tiny."""
    import subprocess

    from benchmarks import pretrained

    if not all(pretrained.available(n) for n in ("mobilenet_v2", "efficientnet_lite2")):
        pytest.skip("ImageNet files not fetched (python benchmarks/pretrained.py --fetch)")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "paper_regime.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "smoke: OK" in done.stdout and "schema checked" in done.stdout


def test_a_run_directory_is_reused_only_for_the_same_config_and_source(tmp_path, monkeypatch):
    import avatarkd.runner

    calls: list[str] = []

    def fake_train(overrides, resume):
        out = Path(next(o for o in overrides if o.startswith("output_dir="))[len("output_dir=") :])
        calls.append(out.name)
        result = {"metrics": {"miou": 0.5}, "wall_seconds": 1.0}
        (out / "metrics.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(P, "_config", lambda name, overrides: list(overrides))
    monkeypatch.setattr(avatarkd.runner, "train", fake_train)
    be = P.RealBackend(DESIGN, P.Settings(out=tmp_path / "out", records=tmp_path / "records"))
    run = tmp_path / "out" / "run"
    be._train_dir("x.yaml", [], run, "cfg")
    be._train_dir("x.yaml", [], run, "cfg")
    assert calls == ["run"]  # finished, same hashes: reused
    (run / "leftover").write_text("from the old source")
    be.source_hash = "changed"
    be._train_dir("x.yaml", [], run, "cfg")
    assert calls == ["run", "run"] and not (run / "leftover").exists()  # started afresh
    be._train_dir("x.yaml", [], run, "other config")
    assert calls == ["run"] * 3
    assert not (tmp_path / "out" / "run.lock").exists()
