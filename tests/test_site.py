"""The static leaderboard site, built from real evaluations: escaping, embedded data, pipeline
checks kept apart from the ranking, and in a real browser from file://: no errors, no horizontal
scroll at 1280 px, sorting, reader weights in the URL hash, model and task pages with plots.

The ranked results are EMT's on a copy of oc20-mini's files given as the user's own dataset (so
they rank like real OC20 data would); EMT on the embedded shift-mini is a pipeline check."""

from __future__ import annotations

import json
import os
import re
import textwrap
from pathlib import Path

import pytest

from mlip_zoo.evaluators.data import datasets_dir
from mlip_zoo.evaluators.runner import RunOptions, evaluate
from mlip_zoo.leaderboard.site import build_site, script_json

CHROMIUM = Path("/usr/bin/chromium")
EVIL = "<script>alert(1)</script>"
# asap_cutoff changes EMT's cutoff, so the copy disagrees a little with the EMT labels: distinct
# numbers to sort by, and a combined score below EMT's perfect 1.0.
COPY_CARD = f"""\
    key: emt-copy
    name: "EMT copy {EVIL}"
    version: "1"
    family: emt
    license: MIT
    targets: EFS
    options: {{asap_cutoff: true}}
    """


def own_copy(folder: Path, name: str) -> Path:
    """An oc20-mini file (or raw S2EF folder) as a user's own dataset: no manifest names a
    labeller, so it is ranked."""
    import shutil

    source, target = datasets_dir() / "oc20-mini" / name, folder / f"my-{name}"
    if source.is_dir():
        shutil.copytree(source, target)
    else:
        target.write_bytes(source.read_bytes())
    return target


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """Results of emt on all three tasks and of emt-copy on S2EF only, and the site built from them."""
    root = tmp_path_factory.mktemp("site")
    results, cards = root / "results", root / "cards"
    cards.mkdir()
    (cards / "emt-copy.yaml").write_text(textwrap.dedent(COPY_CARD))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLIPZOO_CACHE", str(root / "cache"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("MLIPZOO_CARDS", str(cards))
        s2ef, is2re = own_copy(root, "s2ef"), own_copy(root, "is2re.json")
        evaluate("emt", "oc20-s2ef", RunOptions(out=results, workers=0, limit=30, dataset=s2ef))
        evaluate("emt", "oc20-is2re", RunOptions(out=results, workers=0, limit=6, dataset=is2re))
        evaluate("emt", "oc20-is2rs", RunOptions(out=results, workers=0, limit=6, dataset=is2re))
        evaluate("emt-copy", "oc20-s2ef", RunOptions(out=results, workers=0, limit=30, dataset=s2ef))
        evaluate("emt", "ood-shift", RunOptions(out=results, workers=0))  # a pipeline check
        index = build_site(results, root / "out")
    assert index == root / "out" / "index.html"
    return root / "out"


def test_site_pages_escape_names_and_embed_data(site):
    pages = sorted(site.rglob("*.html"))
    names = {p.relative_to(site).as_posix() for p in pages}
    assert {"index.html", "models/emt.html", "models/emt-copy.html", "tasks/oc20-s2ef.html",
            "tasks/oc20-is2re.html", "tasks/oc20-is2rs.html"} <= names
    assert (site / "assets" / "plotly.min.js").stat().st_size > 1_000_000
    for page in pages:
        text = page.read_text()
        assert "<script>alert(1)" not in text, page
        # Offline from file://: no CDN, no external fonts or scripts.
        assert not re.search(r"""(src=|<link[^>]*href=)["']?(https?:)?//""", text), page
        assert "fetch(" not in text and "XMLHttpRequest" not in text
    assert "fetch(" not in (site / "assets" / "site.js").read_text()
    model_page = (site / "models" / "emt-copy.html").read_text()
    assert "EMT copy &lt;script&gt;alert(1)&lt;/script&gt;" in model_page

    index = (site / "index.html").read_text()
    board = re.search(r'<table id="leaderboard".*?</table>', index, re.S).group(0)
    checks = re.search(r'<table class="plain" id="pipeline-checks">.*?</table>', index, re.S).group(0)
    # The pipeline check is listed apart, judged within the task's tolerance, and never ranked.
    assert "ood-shift" not in board and "shift-mini (EMT labels)" in checks
    assert re.search(r'class="pass">✓ ood_forces_mae: exact within 1e-09', checks)
    match = re.search(r'<script type="application/json" id="leaderboard-data">(.*?)</script>', index, re.S)
    data = json.loads(match.group(1))
    assert [m["key"] for m in data["models"]] == ["emt", "emt-copy"]  # perfect EMT ranks first
    assert data["models"][1]["values"]["oc20-is2re"] is None
    assert re.search(r'<tr data-model="emt-copy".*?partial \(1 of \d+ tasks\)', index, re.S)
    assert index.count('class="combined"') == 2
    task_page = (site / "tasks" / "oc20-s2ef.html").read_text()
    plot = json.loads(re.search(r'id="plot-data">(.*?)</script>', task_page, re.S).group(1))
    assert set(plot["models"]) == {"emt", "emt-copy"}
    assert plot["models"]["emt-copy"]["name"] == f"EMT copy {EVIL}"
    assert len(plot["models"]["emt"]["forces"]["x"]) > 30
    assert "\\u003cscript\\u003e" in task_page


def test_script_json_cannot_close_a_script_tag():
    text = str(script_json({"name": "</script><!-- & \u2028", "x": float("nan")}))
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"name": "</script><!-- & \u2028", "x": None}


@pytest.mark.slow
@pytest.mark.labels
def test_site_in_a_browser(site):
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: install Debian's chromium package to run the browser test"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-quic"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("requestfailed", lambda req: problems.append(f"request failed: {req.url} {req.failure}"))
            page.goto((site / "index.html").as_uri())
            page.wait_for_load_state("load")

            rows = page.locator("#leaderboard tbody tr")
            assert rows.count() == 2
            # The board fits a 1280-px window: nothing scrolls sideways, the table or the page.
            wrap = page.locator("#leaderboard").locator("xpath=..")
            assert wrap.evaluate("e => e.scrollWidth <= e.clientWidth")
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
            assert page.locator("#checks-h").is_visible()
            assert page.locator("#pipeline-checks tbody tr").count() == 1

            def order() -> list[str]:
                return [rows.nth(i).get_attribute("data-model") for i in range(rows.count())]

            def column(col: int) -> list[float | None]:
                values = page.eval_on_selector_all(
                    "#leaderboard tbody tr", f"rs => rs.map(r => r.cells[{col}].getAttribute('data-value'))")
                return [float(v) if v else None for v in values]

            headers = page.locator("#leaderboard thead th")
            s2ef = next(i for i in range(headers.count()) if "oc20-s2ef" in headers.nth(i).inner_text())
            # Sort by S2EF force MAE: first click puts the best (lowest) first, the second reverses.
            headers.nth(s2ef).locator("button").click()
            assert headers.nth(s2ef).get_attribute("aria-sort") == "ascending"
            assert column(s2ef) == sorted(column(s2ef)) and order() == ["emt", "emt-copy"]
            headers.nth(s2ef).locator("button").click()
            assert headers.nth(s2ef).get_attribute("aria-sort") == "descending"
            assert column(s2ef) == sorted(column(s2ef), reverse=True) and order() == ["emt-copy", "emt"]

            # The combined score has its interval and rank range too (rendered by site.py).
            def combined_uncertainty() -> dict[str, str]:
                return {k: page.locator(f'tr[data-model="{k}"] td.combined .uncertainty').inner_text()
                        for k in ("emt", "emt-copy")}

            initial = combined_uncertainty()
            assert initial["emt"].split() == ["[1.000,", "1.000]", "rank", "1"]
            lo, hi = (float(x) for x in re.findall(r"[\d.]+", initial["emt-copy"])[:2])
            assert lo <= 0.999 <= hi < 1.0 and initial["emt-copy"].endswith("rank 2")

            # Combined score, ascending: the partial emt-copy (0.999) comes before the perfect emt.
            combined = page.locator("#leaderboard thead th").nth(1)
            combined.locator("button").click()
            if combined.get_attribute("aria-sort") != "ascending":
                combined.locator("button").click()
            assert combined.get_attribute("aria-sort") == "ascending"
            assert order() == ["emt-copy", "emt"]
            # Without the S2EF term emt-copy has no term left: no score, so it sinks below emt.
            page.fill("#weight-oc20-s2ef", "0")
            assert order() == ["emt", "emt-copy"]
            assert page.locator('tr[data-model="emt-copy"] td.combined').inner_text().startswith("—")
            assert "oc20-s2ef:0" in page.evaluate("location.hash")
            page.fill("#weight-oc20-is2re", "2")
            assert "oc20-is2re:2" in page.evaluate("location.hash")

            # Weights survive a reload (read back from the hash).
            page.reload()
            page.wait_for_load_state("load")
            assert page.input_value("#weight-oc20-s2ef") == "0"
            assert page.input_value("#weight-oc20-is2re") == "2"
            assert page.locator('tr[data-model="emt-copy"] td.combined').inner_text().startswith("—")
            assert not page.locator('tr[data-model="emt-copy"] td.combined .ci').is_visible()
            assert page.locator('tr[data-model="emt"] td.combined .rank').inner_text() == "rank 1"
            # Back to the default weights, site.js recomputes exactly what site.py rendered.
            page.click("#weights-reset")
            assert combined_uncertainty() == initial

            # Every number has its interval and every model its rank range beside it.
            copy = json.loads((site.parent / "results" / "emt-copy" / "oc20-s2ef.json").read_text())
            lo, hi = copy["intervals"]["forces_mae"]
            assert lo < copy["metrics"]["forces_mae"] < hi
            copy_cell = page.locator('tr[data-model="emt-copy"] td').nth(s2ef - 1)
            assert copy_cell.locator(".ci").inner_text() == f"[{lo:.4g}, {hi:.4g}]"
            assert copy_cell.locator(".ci").is_visible() and copy_cell.locator(".rank").is_visible()
            assert copy_cell.locator(".rank").inner_text() == "rank 2"
            emt_cell = page.locator('tr[data-model="emt"] td').nth(s2ef - 1)
            emt = json.loads((site.parent / "results" / "emt" / "oc20-s2ef.json").read_text())
            lo, hi = emt["intervals"]["forces_mae"]  # EMT's own labels: zero up to this CPU's round-off
            assert hi < 1e-9 and emt_cell.locator(".ci").inner_text() == f"[{lo:.4g}, {hi:.4g}]"
            assert emt_cell.locator(".rank").inner_text() == "rank 1"
            assert "of 2 on the 30 structures" in emt_cell.locator(".rank").get_attribute("title")

            # The filter hides rows that do not match.
            page.fill("#filter", "copy")
            assert page.locator("#leaderboard tbody tr:visible").count() == 1
            page.fill("#filter", "")

            page.locator('tr[data-model="emt-copy"] a').first.click()
            page.wait_for_load_state("load")
            assert page.url.endswith("/models/emt-copy.html")
            assert page.title().startswith(f"EMT copy {EVIL}")
            assert page.locator("h1").inner_text() == f"EMT copy {EVIL}"

            for task in ("oc20-s2ef", "oc20-is2re", "oc20-is2rs"):
                page.goto((site / "tasks" / f"{task}.html").as_uri())
                page.wait_for_selector(".plot .main-svg", timeout=15_000)
                assert page.locator("#plot-speed .main-svg").count() >= 1
                if task == "oc20-s2ef":  # rank ranges and the paired difference of the two models
                    ranking = page.locator("table.ranking")
                    assert ranking.is_visible()
                    assert ranking.locator('tr[data-model="emt"] td.rank-range').inner_text() == "1"
                    assert ranking.locator('tr[data-model="emt-copy"] td.rank-range').inner_text() == "2"
                    pair = ranking.locator('tr[data-model="emt-copy"] td.pair.sig')
                    assert pair.count() == 1 and pair.locator(".ci").is_visible()
                    results_ci = page.locator('tr[data-model="emt-copy"] .ci').first
                    assert results_ci.is_visible() and results_ci.inner_text().startswith("[")
            page.screenshot(path="/tmp/site-task.png", full_page=True)
            page.goto((site / "index.html").as_uri())
            page.wait_for_load_state("load")
            page.screenshot(path="/tmp/site-index.png", full_page=True)
        finally:
            browser.close()
    assert not problems, problems


def test_site_marks_models_it_cannot_tell_apart(tmp_path, card_dir, monkeypatch):
    """A second EMT gives identical predictions: same rank, rank range 1-1 for both, and the
    pair is marked not significant on the index and in the task's ranking table."""
    card_dir("emt-twin", "key: emt-twin\nname: EMT twin\nversion: '1'\nfamily: emt\nlicense: MIT\ntargets: EFS\n")
    monkeypatch.setenv("MLIPZOO_CARDS", str(card_dir.dir))
    data = own_copy(tmp_path, "s2ef")
    for model in ("emt", "emt-twin"):
        evaluate(model, "oc20-s2ef", RunOptions(out=tmp_path / "results", workers=0, limit=8, dataset=data))
    out = build_site(tmp_path / "results", tmp_path / "site").parent
    index = (out / "index.html").read_text()
    for model, other in (("emt", "EMT twin"), ("emt-twin", "EMT (ASE)")):
        row = re.search(rf'<tr data-model="{model}".*?</tr>', index, re.S).group(0)
        assert '<span class="rank"' in row and ">rank 1</span>" in row
        mark = rf'class="ns" title="not significantly different \(paired bootstrap\) from {re.escape(other)}">'
        assert re.search(mark, row)
    task = (out / "tasks" / "oc20-s2ef.html").read_text()
    table = re.search(r'<table class="plain ranking".*?</table>', task, re.S).group(0)
    assert table.count('class="rank-range">1</td>') == 2
    assert table.count('class="pair ns"') == 2 and 'class="pair sig"' not in table


def test_plots_of_a_large_result_come_from_a_stated_sample(tmp_path):
    """A result of more structures than the plots read (site.PLOT_ROWS) is plotted from a fixed
    sample that the page states; the speed point still averages every row."""
    import pyarrow.parquet as pq

    from synthetic import write_s2ef_result

    from mlip_zoo.leaderboard import site

    path = write_s2ef_result(tmp_path / "results", site.PLOT_ROWS + 5000, atoms=4)
    index = site.build_site(tmp_path / "results", tmp_path / "site")
    page = (index.parent / "tasks" / "oc20-s2ef.html").read_text()
    assert f"{site.PLOT_ROWS} of {site.PLOT_ROWS + 5000}" in page
    data = json.loads(page.split('<script type="application/json" id="plot-data">')[1].split("</script>")[0])
    seconds = pq.read_table(path.with_suffix(".parquet"), columns=["seconds"]).column("seconds").to_numpy()
    assert data["models"]["emt"]["seconds"] == pytest.approx(seconds.mean(), rel=1e-12)
    assert len(data["models"]["emt"]["energy"]["x"]) == 5000
