"""The report: files, numbers, self-containment, and the page in a real (headless) browser."""

from __future__ import annotations

import base64
import html
import json
import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_claims import fake_compare, fake_sweep

from bilens import report
from bilens.experiments.recommend import recommend
from bilens.experiments.summary import build
from bilens.report.lm_notes import MODE_WORDS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Fully offline: the services that phone home at start (component and extension updates,
# network time, sign-in, field trials, safe-browsing, crash reports, metrics) are turned off,
# and what is left (Chromium 156 still starts an update check and an account lookup) cannot
# resolve a name: every host but localhost maps to nothing. The render test checks it in
# Chromium's own net log.
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-default-apps", "--mute-audio", "--no-default-browser-check",
                "--disable-extensions", "--disable-component-extensions-with-background-pages",
                "--disable-field-trial-config", "--disable-breakpad",
                "--disable-domain-reliability", "--disable-client-side-phishing-detection",
                "--no-pings", "--metrics-recording-only", "--allow-browser-signin=false",
                "--disable-features=NetworkTimeServiceQuerying,Translate,MediaRouter,"
                "OptimizationHints,AutofillServerCommunication",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost"]
LOCAL_HOSTS = {"localhost", "127.0.0.1", "[::1]", "~notfound"}


def fake_results() -> dict:
    sweeps = {
        "d_model": fake_sweep("d_model", [64, 128, 256], [dict(ne=0.4), dict(ne=0.2),
                                                          dict(ne=0.1)]),
        "sparsity": fake_sweep("sparsity", [0.0, 1.0, 10.0],
                               [dict(active=0.3, ne=0.5), dict(active=0.2, ne=0.3),
                                dict(active=0.1, ne=0.0123)]),
        "depth": fake_sweep("depth", [1, 2, 4], [dict(ne=0.1), dict(ne=0.2), dict(ne=0.3)]),
        "position": fake_sweep("position", [1, 3], [dict(ne=0.1), dict(ne=math.nan)],
                               variants=(("rms", "post"), ("rms", "pre"))),
    }
    return build({"title": "test report <&>", "commands": ["bilens demo --out x"],
                         "compare": fake_compare(), "sweeps": sweeps,
                         "timing": {"total": 12.5}})


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    results = fake_results()
    return results, report.write(results, out)


def test_files_and_json_carry_every_number(written):
    results, paths = written
    for key in ("html", "markdown", "json", "compare", "sweep-d_model", "sweep-sparsity",
                "sweep-depth", "sweep-position"):
        assert paths[key].is_file() and paths[key].stat().st_size > 0, key
    data = json.loads(paths["json"].read_text())
    rms = next(r for r in data["compare"]["table"] if (r["norm"], r["position"]) == ("rms", "post"))
    assert rms["frozen.ne"] == 0.004 and rms["test_accuracy"] == 0.95
    assert [c["id"] for c in data["claims"]] == [c["id"] for c in results["claims"]]
    assert data["recommendation"]["mode"] in ("frozen", "live")
    for key in ("compare", "sweep-depth"):
        assert paths[key].read_bytes().startswith(PNG_MAGIC)


def test_markdown_has_tables_and_existing_images(written):
    _, paths = written
    md = paths["markdown"].read_text()
    assert "| norm | position |" in md and "| # | claim |" in md
    assert "1.2%" in md                      # the sparsity point's 0.0123 as a percentage
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (paths["markdown"].parent / name).is_file(), name


def test_html_is_self_contained(written):
    _, paths = written
    page = paths["html"].read_text()
    assert "test report &lt;&amp;&gt;" in page             # the title is escaped
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    srcs = re.findall(r'<img[^>]*src="([^"]+)"', page)
    assert len(srcs) == 5
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    for verdict in ("holds", "partly", "fails"):
        assert f'class="v {verdict}"' in page


def test_text_tables_align_and_wrap():
    text = report.text_table(["a", "long header"], [["1", "x " * 30]], wrap={1: 20})
    lines = text.splitlines()
    rule = lines[1].split()
    assert rule[0] == "-" and 11 <= len(rule[1]) <= 20       # header width .. wrap width
    assert len(lines) > 3                                    # the long cell wrapped
    assert all(len(line) <= 23 for line in lines)


def test_interrupted_write_keeps_previous_report(tmp_path, monkeypatch):
    results = fake_results()
    paths = report.write(results, tmp_path)
    before = paths["html"].read_text()
    import bilens.report.html as rh

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(rh, "html", boom)
    with pytest.raises(KeyboardInterrupt):
        report.write(results, tmp_path)
    assert paths["html"].read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_write_refuses_a_report_directory_it_did_not_write(tmp_path, capsys):
    """`OUT/report` is replaced whole: a user's own `report/` must survive, and the
    commands that write one must refuse before any training."""
    from bilens.cli import main
    from bilens.core.errors import BilensError

    mine = tmp_path / "report"
    mine.mkdir()
    (mine / "draft.tex").write_text("keep me")
    with pytest.raises(BilensError, match="not a bilens report"):
        report.write(fake_results(), tmp_path)
    for argv in (["compare", "--dataset", "synthetic", "--epochs", "1"], ["demo"],
                 ["sweep", "depth", "--dataset", "synthetic", "--epochs", "1"]):
        assert main([*argv, "--out", str(tmp_path)]) == 2, argv
        assert "not a bilens report" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    assert sorted(p.name for p in mine.iterdir()) == ["draft.tex"]


def network_attempts(net_log: dict) -> list[str]:
    """What in a Chromium net log (`--log-net-log=FILE`) reached for the network: a DNS query,
    a name looked up other than localhost, a TCP connection or a UDP datagram to an address
    off this machine. (A UDP `connect` alone sends nothing: Chromium's IPv6 reachability
    probe makes one to 2001:4860:4860::8888 to ask the kernel for a route, and is let be.)"""
    names = {v: k for k, v in net_log["constants"]["logEventTypes"].items()}
    seen, udp_off_machine = [], {}
    for event in net_log["events"]:
        kind, params = names.get(event["type"], "?"), event.get("params") or {}
        source = (event.get("source") or {}).get("id")
        address = str(params.get("address", ""))
        off_machine = address and not address.startswith(("127.", "[::1]"))
        if kind == "DNS_TRANSACTION" and "hostname" in params:
            seen.append(f"DNS query for {params['hostname']}")
        elif kind.startswith("HOST_RESOLVER") and "host" in params:
            host = re.sub(r"^[a-z]+://", "", str(params["host"])).rsplit(":", 1)[0]
            if host.lower() not in LOCAL_HOSTS:
                seen.append(f"lookup of {params['host']}")
        elif kind == "TCP_CONNECT_ATTEMPT" and off_machine:
            seen.append(f"connection to {address}")
        elif kind == "UDP_CONNECT" and off_machine:
            udp_off_machine[source] = address
        elif kind == "UDP_BYTES_SENT" and (off_machine or source in udp_off_machine):
            seen.append(f"datagram to {address or udp_off_machine[source]}")
    return seen


def test_network_check_sees_lookups_and_connections():
    """The check must see what Chromium logs when it does go online (types numbered as in
    a real log), or the offline assertion proves nothing."""
    types = {"DNS_TRANSACTION": 1, "HOST_RESOLVER_MANAGER_REQUEST": 2, "TCP_CONNECT_ATTEMPT": 3,
             "UDP_CONNECT": 4, "UDP_BYTES_SENT": 5}
    log = {"constants": {"logEventTypes": types}, "events": [
        {"type": 1, "params": {"hostname": "update.googleapis.com"}},
        {"type": 2, "params": {"host": "https://accounts.google.com"}},
        {"type": 2, "params": {"host": "https://~notfound"}},
        {"type": 2, "params": {"host": "http://localhost:8000"}},
        {"type": 3, "params": {"address": "142.250.74.78:443"}},
        {"type": 3, "params": {"address": "127.0.0.1:8000"}},
        {"type": 4, "source": {"id": 7}, "params": {"address": "[2001:4860:4860::8888]:443"}},
        {"type": 4, "source": {"id": 8}, "params": {"address": "8.8.8.8:53"}},
        {"type": 5, "source": {"id": 8}, "params": {"byte_count": 40}}]}
    assert network_attempts(log) == ["DNS query for update.googleapis.com",
                                     "lookup of https://accounts.google.com",
                                     "connection to 142.250.74.78:443",
                                     "datagram to 8.8.8.8:53"]


def _chromium(args: list[str], timeout: float = 90) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="bilens-chromium-")
    try:
        return subprocess.run([CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install "
                    "chromium; ./setup.sh --dev installs it)")
def test_report_renders_in_headless_chromium(written, tmp_path):
    _, paths = written
    url = paths["html"].resolve().as_uri()
    shot = tmp_path / "screenshot.png"
    net_log = tmp_path / "net-log.json"
    res = _chromium(["--enable-logging=stderr", "--v=0", "--window-size=1280,2400",
                     f"--log-net-log={net_log}", f"--screenshot={shot}",
                     "--virtual-time-budget=5000", url])
    assert shot.is_file() and shot.read_bytes().startswith(PNG_MAGIC), res.stderr[-2000:]
    assert network_attempts(json.loads(net_log.read_text())) == []       # fully offline
    assert shot.stat().st_size > 20_000                      # not a blank page
    # Chromium logs every console message (log, error, uncaught exception) as INFO:CONSOLE;
    # the page writes none when all is well, so any message is a failure.
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    assert not console, console
    dom = _chromium(["--dump-dom", "--virtual-time-budget=5000", url])
    match = re.search(r'data-images="([^"]+)"', dom.stdout)
    assert match, "the page's image check did not run: " + dom.stderr[-2000:]
    assert match.group(1) == "ok:5", match.group(1)
    keep = Path(tempfile.gettempdir()) / "bilens-report-screenshot.png"
    shutil.copyfile(shot, keep)                               # for a human to look at


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_browser_check_catches_a_broken_image(written, tmp_path):
    """The page's own check must fail on a broken image, or the test above proves nothing."""
    _, paths = written
    page = paths["html"].read_text()
    broken = re.sub(r'src="data:image/png;base64,[^"]{40}', 'src="data:image/png;base64,AAAA',
                    page, count=1)
    bad = tmp_path / "broken.html"
    bad.write_text(broken)
    res = _chromium(["--enable-logging=stderr", "--v=0", "--dump-dom",
                     "--virtual-time-budget=5000", bad.resolve().as_uri()])
    match = re.search(r'data-images="([^"]+)"', res.stdout)
    assert match and match.group(1) == "broken:1", res.stdout[-500:]
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    assert any("image(s) failed to load" in line for line in console), res.stderr[-2000:]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_browser_check_catches_a_script_error(written, tmp_path):
    page = written[1]["html"].read_text().replace("<script>", "<script>undefinedFn();", 1)
    bad = tmp_path / "script-error.html"
    bad.write_text(page)
    res = _chromium(["--enable-logging=stderr", "--v=0", "--screenshot=" + str(tmp_path / "s.png"),
                     "--virtual-time-budget=5000", bad.resolve().as_uri()])
    assert any(":CONSOLE" in line and "undefinedFn" in line for line in res.stderr.splitlines())


def test_sweep_notes_from_the_tables():
    dm = fake_sweep("d_model", [64, 256, 1024], [dict(ds=0.1 * d ** -0.5) for d in (64, 256, 1024)])
    assert "d_model^-0.50" in report.sweep_note(dm)
    sp = fake_sweep("sparsity", [0.0, 3.0, 10.0], [dict(active=0.3), dict(active=0.12, ne=0.07),
                                                    dict(active=0.05)])
    assert "lies at L1 = 3 " in report.sweep_note(sp) and "there 7.0%" in report.sweep_note(sp)
    dp = fake_sweep("depth", [1, 4], [dict(ne=0.1), dict(ne=0.4)])
    dp["table"][-1]["frozen.ne_per_layer"] = [0.9, 0.6, 0.3, 0.1]
    note = report.sweep_note(dp)
    assert "10.0% -> 40.0%" in note and "9.0x" in note


def test_columns_follow_the_modes_measured():
    cmp = fake_compare()
    header, _ = report.compare_rows(cmp["table"])
    assert "NE renorm" not in header and "NE live" in header
    for row in cmp["table"]:
        row["renorm.ne"], row["renorm.pearson"], row["renorm.top10"] = 0.002, 0.99, 0.95
    header, rows = report.compare_rows(cmp["table"])
    assert header[4:7] == ["NE frozen", "NE live", "NE renorm"] and rows[2][6] == "0.2%"
    rec = recommend(cmp)
    assert rec["mode"] == "renorm" and any("renorm mode" in t for t in rec["text"])


def test_every_verdict_shows_its_rule_and_why(written):
    """Issue 12 item 16/20: every claim, holding or not, is printed with its rule; a claim
    that holds (the sparsity trend here) says why too."""
    results, paths = written
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    assert "computed by bilens.experiments.claims" in md
    for i, c in enumerate(results["claims"]):
        assert f"**{i + 1}. {c['claim']}: {c['verdict']}.**" in md
        assert f"_Rule: {c['rule']}._" in md
        assert page.count("Rule: ") == len(results["claims"])
    sparsity = next(c for c in results["claims"] if c["id"] == "sparsity")
    assert sparsity["verdict"] == "holds" and "falls steadily" in sparsity["why"]


def test_compounding_says_its_per_layer_numbers_are_the_drift_part():
    from bilens.experiments.claims import evaluate_claims

    sweep = fake_sweep("depth", [1, 4], [dict(drift=0.1, ne=0.2), dict(drift=0.3, ne=0.4)])
    claim = next(c for c in evaluate_claims({"sweeps": {"depth": sweep}})
                 if c["id"] == "compounding")
    assert "norm-drift part of the frozen NE per layer" in claim["measured"]
    assert "the depth table's per-layer column is the total frozen NE" in claim["measured"]


def test_decomposition_sections_in_the_report(tmp_path, make_model):
    """Issue 16: a decomposition section per configuration (no norm once) in both formats,
    built from the plain data the demo stores."""
    import torch

    from bilens.analysis.decompose import decompose
    from bilens.experiments.decompose_models import section

    results = fake_results()
    records, sections = [], []
    for norm, position in [(n, p) for n in ("none", "rms", "layer") for p in ("post", "pre")]:
        model = make_model(norm, position, 0, d_in=64, d_model=8, d_hidden=10, n_out=3)
        dec = decompose(model, inputs=torch.randn(20, 64, dtype=torch.float64))
        row = {"norm": norm, "position": position, "seed": 0}
        records.append({"dataset": "digits", **row, "faithfulness": dec.faithfulness})
        if (norm, position) != ("none", "pre"):
            sections.append(section(dec, model, "digits", row))
    results = build({**results, "decomposition": {
        "settings": {"n_inputs": 20, "stability_n": 16}, "records": records,
        "sections": sections}})
    assert results["claims"][10]["id"] == "features_intact"
    assert results["claims"][10]["verdict"] != "not measured"
    paths = report.write(results, tmp_path)
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    assert md.count("### Decomposition: ") == 5 and "none (post = pre: one network)" in md
    assert page.count("<h3>Decomposition: ") == 5
    for name in ("spectrum", "eigenvectors", "faithfulness"):
        assert (tmp_path / "report" / f"decomposition-rms-pre-{name}.png").is_file()
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (paths["markdown"].parent / name).is_file(), name


# ------------------------------------------------------------------ language models

LM_FIXTURE = Path(__file__).parent / "data" / "compare-lm-synthetic.json"


def lm_compare() -> dict:
    """A real `compare_lm(...).to_dict()` (6 configurations, 1 seed, synthetic-lm; its
    per-model `rows` dropped)."""
    return json.loads(LM_FIXTURE.read_text())


def lm_part(**extra) -> dict:
    """`results["lm"]` with the real comparison, a hand-made claims list and recommendation."""
    claims = [dict(id="norm_drift", claim="Holding the norms makes attribution faithful",
                   seed="frozen-norm ~ live", measured="frozen-norm NE 102% vs live 16%",
                   verdict="fails", rule="frozen-norm NE within 2x of live's", why="it <does> not"),
              dict(id="small", claim="renorm's error is small", seed="< 5%", measured="8-13%",
                   verdict="partly", rule="NE < 5% on every configuration", why="")]
    return {"compare": lm_compare(), "claims": claims,
            "recommendation": {"text": ["Use renorm on layer/pre.", "Expect NE about 8%."]},
            **extra}


def lm_sweep(name: str = "d_model", xs=(32, 64, 128)) -> dict:
    """An LM sweep built from the fixture's rms/pre row: NE falling with x."""
    base = next(r for r in lm_compare()["table"] if (r["norm"], r["position"]) == ("rms", "pre"))
    table = [{**base, "x": x, **{f"{m}.ne": base[f"{m}.ne"] / (i + 1) for m in
                                 ("frozen", "frozen-norm", "live", "renorm")}}
             for i, x in enumerate(xs)]
    return {"name": name, "dataset": "synthetic-lm", "param": f"model.{name}", "label": name,
            "log_x": True, "settings": {"dataset": "synthetic-lm", "param": f"model.{name}",
                                        "values": list(xs), "variants": [["rms", "pre"]]},
            "table": table, "rows": []}


def chromium_check(page: Path, tmp_path: Path) -> tuple[list[str], str]:
    """The page's console messages and its own image check (`data-images`) in Chromium."""
    url = page.resolve().as_uri()
    res = _chromium(["--enable-logging=stderr", "--v=0", "--window-size=1280,2400",
                     f"--screenshot={tmp_path / 'shot.png'}", "--virtual-time-budget=5000", url])
    console = [line for line in res.stderr.splitlines() if ":CONSOLE" in line]
    dom = _chromium(["--dump-dom", "--virtual-time-budget=5000", url])
    match = re.search(r'data-images="([^"]+)"', dom.stdout)
    return console, match.group(1) if match else "no check: " + dom.stderr[-2000:]


@pytest.fixture(scope="module")
def written_lm(tmp_path_factory):
    """Both families (the LM part with a sweep, and a combined recommendation), and the
    LM-only results `bilens compare --kind transformer` writes (built: the MLP claims are
    all "not measured")."""
    both = {**fake_results(), "lm": lm_part(sweeps={"d_model": lm_sweep()}),
            "combined": {"text": ["MLPs: live; language models: renorm."]}}
    only = build({"title": "bilens compare --kind transformer", "commands": ["bilens x"],
                  "lm": lm_part(), "timing": {"compare": 54.6}})
    return {name: (res, report.write(res, tmp_path_factory.mktemp(name)))
            for name, res in (("both", both), ("only", only))}


def test_lm_section_in_both_formats(written_lm):
    results, paths = written_lm["both"]
    for key in ("lm-compare", "lm-split", "lm-distance", "lm-sweep-d_model", "compare"):
        assert paths[key].read_bytes().startswith(PNG_MAGIC), key
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    assert page.count('<section id="lm">') == 1 and "<h2>Comparison</h2>" in page
    for text in ("Language models: the seed&#x27;s comparison", "33,792 per model",
                 "Recommendation: MLPs and language models", "Use renorm on layer/pre.",
                 "it &lt;does&gt; not", "Sweep: d_model", "norm drift"):
        assert text in page, text
    for mode, words in MODE_WORDS.items():                  # every mode said in words
        assert f"<b>{mode}</b>: {html.escape(words)}" in page
    assert page.count("Rule: ") == len(results["claims"]) + 2       # MLP's and LM's
    assert "## Language models: the seed's comparison" in md and "| norm | position |" in md
    assert "**1. Holding the norms makes attribution faithful: fails.**" in md
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md):
        assert (paths["markdown"].parent / name).is_file(), name
    assert "lm" in json.loads(paths["json"].read_text())


def test_lm_only_report_skips_the_mlp_section(written_lm):
    results, paths = written_lm["only"]
    assert all(c["verdict"] == "not measured" for c in results["claims"])     # MLP's, built
    md, page = paths["markdown"].read_text(), paths["html"].read_text()
    for text in (page, md):            # the LM claims may say "not measured" (no sweeps
        # ran); the MLP ones, all unmeasured here, must not appear at all
        assert "Without a norm, attribution is perfect" not in text
        assert "No comparison was run" not in text
        assert "Language models: the seed" in text and "Timing" in text
    assert "<h2>Comparison</h2>" not in page and "<h2>The seed&#x27;s claims</h2>" not in page
    assert sorted(k for k in paths if k.endswith("png") or k.startswith("lm-")) == [
        "lm-compare", "lm-distance", "lm-split"]


def test_without_lm_the_report_has_no_lm_section(written):
    _, paths = written
    page, md = paths["html"].read_text(), paths["markdown"].read_text()
    assert 'id="lm"' not in page and "Language models" not in md
    assert not any(k.startswith("lm-") for k in paths)


def test_lm_numbers_come_from_the_table(tmp_path):
    """Change one NE, one split part and one loss in the input: the HTML, the Markdown, the
    text table and the plot follow (the numbers are the table's, not constants)."""
    from bilens.core.units import pct

    def render(cmp):
        paths = report.write({"lm": {"compare": cmp}}, tmp_path / str(len(list(
            tmp_path.iterdir()))))
        return paths["html"].read_text(), paths["markdown"].read_text(), paths

    cmp = lm_compare()
    page, md, paths = render(cmp)
    row = next(r for r in cmp["table"] if (r["norm"], r["position"]) == ("layer", "pre"))
    new = {"renorm.ne": 0.4321, "drift.ne_gating": 0.0777, "test_loss": 9.8765}
    shown = [pct(0.4321), pct(0.0777), "9.877"]
    before = [pct(row[k]) if k != "test_loss" else f"{row[k]:.3f}" for k in new]
    assert all(s not in page for s in shown) and all(b in page for b in before)
    row.update(new)
    page2, md2, paths2 = render(cmp)
    for text in (page2, md2, report.lm_compare_text(cmp["table"])):
        assert all(s in text for s in shown), shown
    layer_pre = next(line for line in md2.splitlines() if line.startswith("| layer | pre | 1 |"))
    assert pct(0.4321) in layer_pre and "9.877" in layer_pre
    assert paths2["lm-compare"].read_bytes() != paths["lm-compare"].read_bytes()
    assert paths2["lm-split"].read_bytes() != paths["lm-split"].read_bytes()


def test_lm_section_tolerates_missing_parts(tmp_path):
    cmp = lm_compare()
    for i, lm in enumerate([{"compare": cmp}, {"claims": lm_part()["claims"]},
                            {"sweeps": {"depth": lm_sweep("depth", (1, 2))}},
                            {"recommendation": {"text": ["only this"]}},
                            {"compare": {**cmp, "table": []}}]):
        paths = report.write({"lm": lm}, tmp_path / str(i))
        page = paths["html"].read_text()
        assert '<section id="lm">' in page and "not measured" not in page, lm.keys()


def test_lm_text_tables():
    table = lm_compare()["table"]
    text = report.lm_compare_text(table)
    assert "post = pre" in text and "NE frozen-norm" in text and "attention change" in text
    assert text.count("\nrms    pre") == 2                       # both tables, once each
    three = [{**r, "n_seeds": 3, "renorm.ne_std": 0.012} for r in table]
    assert "± 1.2%" in report.lm_compare_text(three)
    sweep = report.lm_sweep_text(lm_sweep("depth", (1, 2)))
    assert "NE frozen per layer" in sweep and sweep.count("rms/pre") == 2


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
@pytest.mark.parametrize("name", ["both", "only"])
def test_lm_report_renders_in_headless_chromium(written_lm, tmp_path, name):
    _, paths = written_lm[name]
    page = paths["html"].read_text()
    n_images = len(re.findall(r"<img ", page))
    assert n_images == len(set(paths) - {"html", "markdown", "json"})    # every PNG shown
    console, images = chromium_check(paths["html"], tmp_path)
    assert not console, console
    assert images == f"ok:{n_images}", images
