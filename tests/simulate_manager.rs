//! `hpfaas manager --simulate` against the real broker: several simulated
//! manager identities in one process register over (encrypted or clear)
//! ZeroMQ, every task comes back exactly once, successful, and the process
//! leaves when the broker shuts down.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use hpfaas_executor::broker::curve::CurveFile;
use hpfaas_executor::broker::{self, BrokerCommand, BrokerConfig, BrokerEvent};
use hpfaas_protocol::task::{FunctionCode, Outcome, TaskSpec};
use uuid::Uuid;

const MANAGERS: u32 = 3;
const TASKS: usize = 3000;

async fn every_task_once(encrypted: bool) {
    let keys_dir = temp_dir("simulate");
    let keys = keys_dir.join("curve.json");
    let curve = if encrypted {
        let file = CurveFile::generate().unwrap();
        file.write(&keys).unwrap();
        Some(file.server_keys().unwrap())
    } else {
        None
    };
    let mut broker = broker::start(BrokerConfig::loopback(
        Duration::from_millis(200),
        Duration::from_secs(10),
        curve,
    ))
    .unwrap();
    let mut managers = SimulatedManagers::start(
        &broker.url,
        MANAGERS,
        4,
        encrypted.then_some(keys.as_path()),
    );
    let wait = async {
        loop {
            match broker.events.recv().await {
                Some(BrokerEvent::Load(load)) if load.managers == MANAGERS => {
                    assert_eq!(load.total_workers, MANAGERS * 4);
                    return;
                }
                Some(_) => {}
                None => panic!("the broker stopped"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .expect("the simulated managers did not register");

    let function_id = Uuid::new_v4();
    let tasks: Vec<TaskSpec> = (0..TASKS)
        .map(|_| TaskSpec {
            task_id: Uuid::new_v4(),
            function_id,
            payload: pack(&["11\n[]", "11\n{}"]),
            blob: None,
            result_serializers: vec![],
            resource_spec: None,
        })
        .collect();
    let mut seen: HashMap<Uuid, u32> = tasks.iter().map(|t| (t.task_id, 0)).collect();
    for (i, chunk) in tasks.chunks(500).enumerate() {
        let functions = match i {
            0 => vec![FunctionCode {
                function_id,
                code: pack(&["01\nno-op"]),
            }],
            _ => vec![],
        };
        broker
            .commands
            .send(BrokerCommand::Submit {
                functions,
                tasks: chunk.to_vec(),
            })
            .unwrap();
    }
    let mut results = 0;
    let collect = async {
        while results < TASKS {
            if let Some(BrokerEvent::Results(batch)) = broker.events.recv().await {
                for r in batch {
                    assert!(
                        matches!(r.outcome, Outcome::Success { .. }),
                        "{:?}",
                        r.outcome
                    );
                    *seen.get_mut(&r.task_id).expect("a task of ours") += 1;
                    results += 1;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), collect)
        .await
        .expect("not every result came back");
    broker.commands.send(BrokerCommand::Shutdown).unwrap();
    broker.task.await.unwrap();
    let status = managers
        .wait_exit(Duration::from_secs(60))
        .expect("the simulated managers did not leave on Shutdown");
    assert!(status.success(), "{status}");
    // The broker has stopped: every event it will ever send is queued, so a
    // duplicate result, had there been one, is among them.
    while let Ok(event) = broker.events.try_recv() {
        assert!(
            !matches!(event, BrokerEvent::Results(_)),
            "a duplicate result"
        );
    }
    assert!(seen.values().all(|&n| n == 1), "each task exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_managers_return_every_task_once_in_clear() {
    every_task_once(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_managers_return_every_task_once_encrypted() {
    every_task_once(true).await;
}
