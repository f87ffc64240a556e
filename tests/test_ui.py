"""The MLflow UI workflow end to end: a smoke search fills a scratch store, `mlflow ui` serves it on
127.0.0.1, and headless Chromium (Debian's `chromium` and `chromium-driver`, driven by selenium) shows
the search's experiment, its runs and a run's metrics, and a branch nested under its trunk. Screenshots are
saved beside the store.

Without Chromium the test is skipped, unless RAYCREDIT_REQUIRE_BROWSER=1 (set by .ci/run, which installs
it), where a missing browser fails it.
"""

import os
import shutil
import sys
from urllib.parse import quote

import pytest

from raycredit import tracking

from mlflow_checks import new_store, runs_of
from ports import free_port, server
from searches_loader import load_search

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and DRIVER) and os.environ.get("RAYCREDIT_REQUIRE_BROWSER") != "1":
    pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def mlflow_ui(tmp_path_factory):
    """`mlflow ui` on 127.0.0.1 over a scratch store, in its own process group, for this module's tests (each
    with its own experiment); one worker process (the default 4 take seconds more to start on 2 cores)."""
    tmp_path = tmp_path_factory.mktemp("mlflow_ui")
    port, uri = free_port(), new_store(tmp_path / "mlflow.db")
    tracking.ensure_experiment(uri, "placeholder")  # the store exists before the UI opens it
    with server([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
                 "--port", str(port), "--workers", "1"], port, tmp_path / "mlflow_ui.log"):
        yield uri, f"http://127.0.0.1:{port}"


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM and DRIVER, "chromium and chromedriver are not installed"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1600,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def page_shows(driver, url: str, *texts: str, timeout: float = 90) -> str:
    """Open url and wait until the rendered page's text contains every one of texts; return that text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    body = ""

    def ready(d) -> bool:
        nonlocal body
        body = d.find_element(By.TAG_NAME, "body").text
        return all(t in body for t in texts)

    try:
        WebDriverWait(driver, timeout, poll_frequency=1).until(ready)
    except Exception:
        raise AssertionError(f"{url} never showed {texts}; it shows:\n{body[:3000]}") from None
    return body


def test_a_smoke_search_is_browsable_in_the_mlflow_ui(ray_session, tmp_path, mlflow_ui, browser, capsys):
    uri, url = mlflow_ui
    scan = load_search("both_fail_scan")
    rc = scan.main(["--preset", "smoke", "--seeds", "0", "--set", "d=16", "--set", "L=2", "--epochs", "2",
                    "--set", "n_train=500", "--set", "credit_norm=false", "--tracking-uri", uri,
                    "--storage", str(tmp_path / "ray"),
                    "--out", str(tmp_path / "report"), "--gpus-per-trial", "0", "--experiment", "ui-smoke"])
    assert rc == 0
    _, runs = runs_of(uri, "ui-smoke")
    exp_id = runs[0].info.experiment_id
    fa = next(r for r in runs if r.info.run_name == "fa-d16-L2-seed0")

    page_shows(browser, f"{url}/#/experiments", "ui-smoke")
    page_shows(browser, f"{url}/#/experiments/{exp_id}/runs", "fa-d16-L2-seed0", "dfa-d16-L2-seed0",
               "bp-d16-L2-seed0", "frozen-d16-L2-seed0", "plots", "5 matching runs")
    browser.save_screenshot(str(tmp_path / "experiment.png"))
    # the README's filter for FA and DFA with their frozen baseline, as the UI puts it in its URL
    body = page_shows(browser, f"{url}/#/experiments/{exp_id}/runs?searchFilter=" + quote("params.rule != 'bp'"),
                      "3 matching runs")
    assert "fa-d16-L2-seed0" in body and "dfa-d16-L2-seed0" in body and "bp-d16-L2-seed0" not in body
    dataset = fa.inputs.dataset_inputs[0].dataset
    body = page_shows(browser, f"{url}/#/experiments/{exp_id}/runs/{fa.info.run_id}", "fa-d16-L2-seed0", "Metrics (",
                      f"test_acc\n{fa.data.metrics['test_acc']}", f"deep_cos\n{fa.data.metrics['deep_cos']}",
                      f"h_norm/last\n{fa.data.metrics['h_norm/l2']}", "penalty_lam", "both_fail_scan.py",
                      f"{dataset.name} ({dataset.digest})")
    browser.save_screenshot(str(tmp_path / "run.png"))
    commit = fa.data.tags.get("mlflow.source.git.commit")
    assert commit is None or commit[:7] in body, body  # a checkout: the run page shows its git commit
    assert (tmp_path / "experiment.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the page the search names at its end (last: the browser keeps a view it opened for the experiment): the
    # model-training layout (no GenAI sidebar), grouped by rule with the searched knobs, the seed and the
    # accuracy as columns; one colour and the mean test_acc per rule
    link = f"{url}/#/experiments/{exp_id}/runs?viewStateShareKey=raycredit&workflowType=machine_learning"
    assert link.split("/#/")[1] in capsys.readouterr().out
    body = page_shows(browser, link, "Group by: rule", "Group: fa", "Group: frozen", "Parameters", "Metrics",
                      "test_acc", "deep_cos", "(average)", "Model registry")
    browser.save_screenshot(str(tmp_path / "view.png"))
    for genai in ("Traces\nSessions", "Judges", "Prompts", "Training runs"):
        assert genai not in body, (genai, body[:2000])
    check_branches_nest_under_their_trunk(tmp_path, uri, url, browser)


def check_branches_nest_under_their_trunk(tmp_path, uri: str, url: str, browser) -> None:
    """A trunk and a branch of it from one search: the branch's run page names its parent run, and the
    experiment's table shows the branch only under its trunk (collapsed)."""
    from raycredit.search import Branch, Preset, run_search

    preset = Preset(grid={"rule": ["dfa"], "seed": [0]}, branches=(Branch(at=(1,), fixed={"rule": "fa"}),),
                    fixed={"dataset": "synthetic", "d": 16, "L": 2, "n_train": 500, "n_test": 200, "epochs": 2,
                           "probe_size": 32, "rho_dirs": 2})
    rc = run_search("lineage_ui", "", {"smoke": preset}, default_preset="smoke", argv=[
        "--tracking-uri", uri, "--storage", str(tmp_path / "ray"), "--gpus-per-trial", "0",
        "--experiment", "ui-lineage"])
    assert rc == 0
    _, runs = runs_of(uri, "ui-lineage")
    trunk = next(r for r in runs if r.info.run_name == "dfa-d16-L2-seed0")
    branch = next(r for r in runs if r.info.run_name == "fa-d16-L2-seed0-from1")
    assert branch.data.tags["mlflow.parentRunId"] == trunk.info.run_id
    exp_id = trunk.info.experiment_id
    page_shows(browser, f"{url}/#/experiments/{exp_id}/runs/{branch.info.run_id}", "fa-d16-L2-seed0-from1",
               "Parent run", "dfa-d16-L2-seed0")
    browser.save_screenshot(str(tmp_path / "branch.png"))
    body = page_shows(browser, f"{url}/#/experiments/{exp_id}/runs", "dfa-d16-L2-seed0")
    assert "fa-d16-L2-seed0-from1" not in body  # nested: hidden under its trunk until expanded
