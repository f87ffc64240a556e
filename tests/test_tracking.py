"""raycredit.tracking without Ray: what a trial's run holds besides its epochs."""

import time

from raycredit import tracking

from mlflow_checks import new_store


def test_a_run_shorter_than_one_sampling_interval_still_gets_its_machines_system_metrics(tmp_path):
    """MLflow's monitor logs nothing for an interval the run ends in; the run gets those samples, with one at its
    end, as one last step, and a run longer than one interval keeps its earlier steps before it."""
    uri = new_store(tmp_path / "m.db")
    exp = tracking.ensure_experiment(uri, "metrics")
    for interval, least_steps in ((60.0, 1), (0.3, 3)):
        run = tracking.TrialRun(uri, exp, f"k{interval}", run_name="r", params={}, tags={})
        run.monitor_system(interval)
        time.sleep(1.0)
        run.finish()
        client = tracking.client.get_client(uri)
        history = client.get_metric_history(run.run_id, "system/system_memory_usage_megabytes")
        steps = sorted(m.step for m in history)
        assert len(steps) >= least_steps and steps == list(range(len(steps))), (interval, steps)
        assert all(m.value > 0 for m in history)
        assert client.get_run(run.run_id).data.metrics["system/cpu_utilization_percentage"] >= 0
