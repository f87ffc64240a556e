"""Driver of test_cluster's node-loss test, run as its own process: `python node_loss_driver.py OUT STORAGE`.

Builds a `ray.cluster_utils.Cluster` on 127.0.0.1 (a head without GPUs and two worker nodes with one
logical GPU each), checks that every node reads the sweep's STORAGE (a folder, or object storage that the
nodes reach with the credentials of this process's environment), runs CONFIGS as one sweep at 0.5 GPU a
trial, and removes one worker node (all its processes killed) as soon as a trial has logged REMOVE_AT
epochs. Writes OUT/result.json; the cluster is shut down on the way out, whatever happens.
"""

import json
import sys
import threading
import time
from pathlib import Path

from raycredit import engine, tracking  # engine first: it keeps Ray on 127.0.0.1 before ray is imported
from raycredit.config import Config

from mlflow_checks import new_store

CONFIGS = [Config.from_dict(dict(rule=rule, dataset="synthetic", n_train=2000, n_test=200, input_dim=32, d=32, L=3,
                                 epochs=6, probe_size=32, rho_dirs=2, seed=seed, device="cpu"))
           for rule in ("bp", "dfa") for seed in range(4)]
REMOVE_AT = 2
EXPERIMENT = "node-loss"


def main(out: Path, storage: str) -> None:
    import ray
    from mlflow.tracking import MlflowClient
    from ray.cluster_utils import Cluster

    uri = new_store(out / "mlflow.db")
    node = dict(node_ip_address="127.0.0.1", include_dashboard=False)
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, num_gpus=0, **node))
    try:
        workers = [cluster.add_node(num_cpus=2, num_gpus=1, **node) for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        visibility = engine.storage_visibility(storage)
        exp_id = tracking.ensure_experiment(uri, EXPERIMENT)
        settings = engine.SweepSettings(search=EXPERIMENT, experiment_id=exp_id, tracking_uri=uri,
                                        code_version="test", cpus_per_trial=1, gpus_per_trial=0.5)
        removed: dict = {}

        def remove_when_mid_sweep() -> None:
            """Remove the worker node of the first trial to log REMOVE_AT epochs."""
            client = MlflowClient(uri)
            while True:
                ahead = [r for r in client.search_runs([exp_id]) if r.data.metrics.get("epoch", 0) >= REMOVE_AT]
                if ahead:
                    victim = next(w for w in workers if w.node_id == ahead[0].data.tags[tracking.NODE_TAG])
                    removed.update(node=victim.node_id, trial=ahead[0].data.tags[tracking.RUN_KEY_TAG],
                                   epoch=ahead[0].data.metrics["epoch"])
                    cluster.remove_node(victim, allow_graceful=False)
                    return
                time.sleep(0.2)

        thread = threading.Thread(target=remove_when_mid_sweep, daemon=True)
        thread.start()
        status = engine.run_trials(CONFIGS, settings, name="node-loss", storage=storage, max_failures=3)
        thread.join(timeout=60)
        tracking.close_stale_runs(uri, exp_id, status)
        result = dict(status=status, visibility=visibility, removed=removed)
        (out / "result.json").write_text(json.dumps(result, indent=1))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
