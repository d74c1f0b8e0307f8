"""scripts/mutation_score.py: the score of a sampled mutation run, from its table and the verdicts on its
survivors, with scipy's exact interval; a bad table is refused in one line."""

import pytest
from scipy.stats import binomtest

from conftest import load_script

mutation_score = load_script("mutation_score", folder="scripts")

TABLE = """m1\tkilled
m2\ttimeout
m3\tsegfault
m4\tsurvived\tkilled-by-hand\tthe summary test, run by hand
m5\tsurvived\tkilled-since\ta later test
m6\tsurvived\tequivalent\tsame values
m7\tsurvived\tgpu-only\tCUDA only
m8\tsurvived\tcode-removed\tredundant line
m9\tsurvived\tgap\tno test
m10\tno tests
m12\tsurvived
m11\tnot checked
"""


def test_killed_and_excluded_mutants_are_counted_by_status_and_verdict(tmp_path, capsys):
    (tmp_path / "t.tsv").write_text(TABLE)
    assert mutation_score.main([str(tmp_path / "t.tsv")]) == 0
    s = mutation_score.score([line.split("\t") for line in TABLE.splitlines()])
    # 11 decided (m11 is not); 3 excluded (m6-m8); killed: 3 by the run, 2 by hand or since; gaps: m9, m10, m12
    assert (s["mutants"], s["decided"], s["killed_by_run"], s["killed"], s["scored"], s["gaps"]) == (12, 11, 3, 5, 8, 3)
    verdicts = ("equivalent", "gpu-only", "code-removed", "killed-by-hand", "killed-since")
    assert [s[v] for v in verdicts] == [1, 1, 1, 1, 1]
    ci = binomtest(5, 8).proportion_ci(0.95, method="exact")
    assert s["score"] == 5 / 8 and (s["ci_low"], s["ci_high"]) == (ci.low, ci.high)
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"score: 5 / 8 = 62.5% (95% CI [{ci.low:.1%}, {ci.high:.1%}])")


def test_an_all_killed_sample_still_has_a_lower_bound_below_one():
    s = mutation_score.score([[f"m{i}", "killed"] for i in range(30)])
    assert s["score"] == 1.0 and s["ci_high"] == 1.0
    assert s["ci_low"] == pytest.approx(0.025 ** (1 / 30))  # 30 of 30 killed does not show 90%


@pytest.mark.parametrize("content, message", [
    (None, "is not a file: pass the table a sampled run wrote"),
    ("m1\tsurvived\tfine\twhy\n", "unknown verdicts ['fine']: use one of ['code-removed', 'equivalent', "
                                  "'gap', 'gpu-only', 'killed-by-hand', 'killed-since']"),
])
def test_a_missing_table_or_an_unknown_verdict_is_refused_in_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "t.tsv"
    if content is not None:
        path.write_text(content)
    assert mutation_score.main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mutation_score: error: ") and message in err
