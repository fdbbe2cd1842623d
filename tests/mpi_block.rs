//! A block that acts as one MPI job: two managers started by `mpiexec -n 2`
//! on this machine form one communicator, register as two "nodes" with half
//! the cores each (ranks 0 and 1), both run tasks, and losing one rank ends
//! the block, whose tasks then fail with `ManagerLost`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use serde_json::json;

const PLACE: &str = "def place(x):\n    import os, time\n    time.sleep(0.2)\n    return [os.getppid(), sorted(os.sched_getaffinity(0)), os.environ['OMP_NUM_THREADS'] if 'OMP_NUM_THREADS' in os.environ else None]\n";
const NAP: &str = "def nap(s):\n    import os, time\n    open(os.environ['HPFAAS_TEST_PID_FILE'] if 'HPFAAS_TEST_PID_FILE' in os.environ else '/dev/null', 'w').write(str(os.getppid()))\n    time.sleep(s)\n    return s\n";

fn value(doc: &serde_json::Value) -> serde_json::Value {
    let result = doc["result"]
        .as_str()
        .unwrap_or_else(|| panic!("no result: {doc}"));
    serde_json::from_str(result.strip_prefix("11\n").unwrap()).unwrap()
}

#[test]
fn two_managers_under_mpiexec_act_as_one_block() {
    if std::process::Command::new("mpiexec")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mpiexec is required on CI"
        );
        eprintln!("two_managers_under_mpiexec_act_as_one_block: skipped: no mpiexec (apt-get install openmpi-bin)");
        return;
    }
    let svc = Service::start();
    let token = svc.token("mpi");
    let name = format!("it-mpi-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let config = "[engine]\nheartbeat_period = 0.5\nheartbeat_threshold = 10.0\nprefetch_capacity = 0\n\
                  [provider]\ntype = \"local\"\nnodes_per_block = 2\nlauncher = \"mpiexec\"\ninit_blocks = 1\nmin_blocks = 1\nmax_blocks = 1\n\
                  worker_init = \"export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1\"\n";
    let ep = Endpoint::new(&svc, &token, &name, config);
    ep.start();
    let status_url = format!("{}/v2/endpoints/{}/status", svc.url, ep.endpoint_id());
    let details = wait_for(Duration::from_secs(60), "both ranks to register", || {
        let s = get(&status_url, &token).unwrap();
        (s["details"]["managers"] == json!(2)).then_some(s["details"].clone())
    });
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(
        details["total_workers"],
        json!(cores.max(2)),
        "each rank runs workers on its share: {details}"
    );

    let f = ep.register("place", PLACE);
    let args: Vec<serde_json::Value> = (0..8).map(|i| json!([i])).collect();
    let docs = ep.wait_all(&ep.submit_json(&f, &args), Duration::from_secs(60));
    let mut managers: std::collections::BTreeMap<u64, BTreeSet<u64>> = Default::default();
    for doc in &docs {
        let v = value(doc);
        let cpus: BTreeSet<u64> = v[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .collect();
        managers
            .entry(v[0].as_u64().unwrap())
            .or_default()
            .extend(cpus);
    }
    assert_eq!(managers.len(), 2, "tasks ran on both ranks: {managers:?}");
    if cores >= 2 {
        let sets: Vec<&BTreeSet<u64>> = managers.values().collect();
        assert!(
            sets[0].is_disjoint(sets[1]),
            "ranks share the node's cores: {managers:?}"
        );
    }

    // Losing one rank loses the block: its tasks fail with ManagerLost.
    let nap = ep.register("nap", NAP);
    let ids = ep.submit_json(&nap, &[json!([60]), json!([60])]);
    wait_for(Duration::from_secs(30), "both naps to run", || {
        ids.iter()
            .all(|t| ep.task(t)["status"] == "running")
            .then_some(())
    });
    let victim = *managers.keys().next().unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap()
        .success());
    let docs = ep.wait_all(&ids, Duration::from_secs(30));
    for doc in docs {
        assert_eq!(doc["exception_type"], "ManagerLost", "{doc}");
    }
}
