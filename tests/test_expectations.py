"""Issue 24: before training, the Layers page says what each plan is expected to give on data of this size (the
bench's figures kept in tl_core.plan.expectations, and the Auto plan's own measurement), and warns when the chosen
plan is one that the figures say loses against the default."""
import pytest

from apptest_support import open_page
from tl_core.data import datasets
from tl_core.data.sample_data import SAMPLE_DIR
from tl_core.models import backbones
from tl_core.plan import expectations

pytestmark = pytest.mark.usefixtures("navigation_pages", "fake_jobs")


def _measured(head_gain=0.10, top2_gain=0.02, all_gain=0.30, se=0.05):
    """plan.json as tl_core.plan.auto_plan writes it (gains over the last-layer probe)."""
    return {"rows": [{"plan": "head", "groups": 0, "gain": head_gain, "gain_se": 0.02, "features": "multi-layer"},
                     {"plan": "top-1", "groups": 1, "skipped": True, "why": "about 90 s, beyond the budget"},
                     {"plan": "top-2", "groups": 2, "gain": top2_gain, "gain_se": se},
                     {"plan": "all", "groups": 8, "gain": all_gain, "gain_se": se}],
            "words": "kept fine-tuning all"}


def test_the_bench_table_covers_every_plan_against_the_default():
    assert expectations.BENCH, "bench/plans.py figures are kept here"
    for (data, per_class), table in expectations.BENCH.items():
        assert data in expectations.BENCH_SETS and "default" in table
        for plan, (acc, sd, draws) in table.items():
            assert 0 < acc <= 100 and sd >= 0 and draws >= 3, (data, per_class, plan)


def test_a_plan_that_lost_in_the_bench_is_marked_and_warned_about():
    for (data, per_class), table in expectations.BENCH.items():
        for plan in expectations.PLANS:
            if plan not in table:
                continue
            acc, sd, _ = table[plan]
            loses = acc - table["default"][0] < -max(sd, table["default"][1])
            row = next(t for t in expectations.from_bench(per_class) if t["set"] == expectations.BENCH_SETS[data])
            assert row["plans"][plan]["loses"] == loses
            if loses:
                assert "lost against the default" in expectations.verdict(plan, per_class)


def test_the_users_own_measurement_outranks_the_bench():
    measured = _measured()
    rows = expectations.from_measurement(measured)
    assert rows["top-2"]["loses"] and "-8.0 points against feature extraction" in rows["top-2"]["words"]
    assert not rows["all"]["loses"] and "wins" in rows["all"]["words"]
    assert rows["top-1"]["gain"] is None and "not measured" in rows["top-1"]["words"]
    assert "measured fine-tune the top 2 groups" in expectations.verdict("top-2", 20, measured)
    assert expectations.verdict("all", 20, measured) is None  # measured to win: no warning, whatever the bench
    assert expectations.verdict("auto", 20, measured) is None


def test_the_layers_page_says_what_each_plan_gives_before_training():
    files = [(path.name, path.read_bytes(), label) for label in ("Bag", "Trouser", "Sneaker")
             for path in sorted((SAMPLE_DIR / label).glob("*.png"))[:20]]
    dataset = datasets.ingest_files(files, name="twenty")
    at = open_page("pages/3_Layers.py", dataset_dir=str(dataset.root), image_size=64,
                   image_size_backbone=backbones.EMBEDDED_MODEL, freeze_preset="all")
    assert not at.exception
    captions = " ".join(c.value for c in at.caption)
    assert "What each plan is expected to give" in " ".join(m.value for m in at.markdown)
    assert "the default Auto plan gave" in captions.replace("\\", "")
    expected_warning = expectations.verdict("all", 20)
    assert bool(at.warning) == bool(expected_warning)
