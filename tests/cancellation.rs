//! Cancelling tasks through the real stack (`hpfaas service`, `hpfaas
//! endpoint start`, a local block): a running Python task's worker process
//! is killed and replaced, a running shell task's command is killed with
//! everything it started, and queued tasks (in the manager's queue and in
//! the broker's) never run.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn wait_gone(pid: i32, what: &str) {
    wait_for(Duration::from_secs(60), what, || {
        (!alive(pid)).then_some(())
    });
}

#[test]
fn cancel_kills_running_tasks_and_drops_queued_ones() {
    let started = Instant::now();
    let svc = Service::start();
    let token = svc.token("canceller");
    let name = format!("it-cancel-{}", std::process::id());
    // Two slots and a prefetch of one: two tasks run, one waits in the
    // manager's queue, the rest in the broker's.
    let config = "[engine]\nmax_workers_per_node = 2\nprefetch_capacity = 1\n\
                  heartbeat_period = 0.5\nheartbeat_threshold = 10.0\n\
                  [provider]\ntype = \"local\"\ninit_blocks = 1\nmax_blocks = 1\n";
    let ep = Endpoint::new(&svc, &token, &name, config);
    ep.start();
    let files = temp_dir("cancel-files");
    let file = |n: &str| files.join(n).display().to_string();
    let nap = ep.register("nap", NAP_WITH_PID);
    let shell = post(
        &format!("{}/v3/functions", svc.url),
        &token,
        json!({"function_name": "bg", "function_code":
            pack(&[r#"sh
{"cmd": "sleep 60 & echo $! > {path}; wait"}"#])}),
    )
    .unwrap()["function_uuid"]
        .as_str()
        .unwrap()
        .to_string();
    let submit = |function: &str, payload: String| -> String {
        let reply = post(
            &format!("{}/v3/endpoints/{}/submit", svc.url, ep.endpoint_id()),
            &token,
            json!({"tasks": {function: [payload]}, "result_serializers": ["11\n"]}),
        )
        .unwrap();
        reply["tasks"][function][0].as_str().unwrap().to_string()
    };
    let nap_task = |path: &str, seconds: u32| {
        submit(
            &nap,
            pack(&[&format!("11\n[{}, {seconds}]", json!(path)), "11\n{}"]),
        )
    };
    let cancel = |task_id: &str| {
        let r = post(
            &format!("{}/v3/tasks/{task_id}/cancel", svc.url),
            &token,
            json!({}),
        )
        .unwrap();
        assert_eq!(r["status"], "cancelled", "{r}");
    };
    let wait_running = |task_id: &str| {
        wait_for(Duration::from_secs(30), "the task to run", || {
            (ep.task(task_id)["status"] == "running").then_some(())
        })
    };

    let python = nap_task(&file("python.pid"), 60);
    let worker_pid = pid_in(&files.join("python.pid"), "the Python task to start");
    let sh = submit(
        &shell,
        pack(&[
            "11\n[]",
            &format!("11\n{}", json!({"path": file("shell.pid")})),
        ]),
    );
    let sleep_pid = pid_in(&files.join("shell.pid"), "the shell task to start");
    wait_running(&python);
    wait_running(&sh);
    assert!(alive(worker_pid) && alive(sleep_pid));
    let queued: Vec<String> = (0..2)
        .map(|i| nap_task(&file(&format!("queued{i}.pid")), 0))
        .collect();

    // All four are in the endpoint's hands (manager queue and broker) before
    // any cancel. Queued first: cancelling the running ones frees slots at once.
    wait_outstanding(&ep, 4, "the endpoint to hold all four tasks");
    for q in &queued {
        cancel(q);
    }
    cancel(&python);
    cancel(&sh);
    for t in queued.iter().chain([&python, &sh]) {
        let doc = ep.task(t);
        assert_eq!(doc["status"], "cancelled", "{doc}");
        assert_eq!(doc["exception_type"], "TaskCancelled", "{doc}");
    }
    wait_gone(worker_pid, "the cancelled task's worker process to die");
    wait_gone(sleep_pid, "the cancelled shell command's child to die");

    // The slot has a fresh worker, and the queued tasks never ran.
    let after = nap_task(&file("after.pid"), 0);
    let doc = ep.wait_all(std::slice::from_ref(&after), Duration::from_secs(30))[0].clone();
    assert_eq!(doc["status"], "success", "{doc}");
    let new_pid: i32 = doc["result"]
        .as_str()
        .and_then(|r| r.strip_prefix("11\n"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{doc}"));
    assert_ne!(new_pid, worker_pid, "a fresh worker runs the next task");
    // The endpoint answered every cancel: it holds nothing that could still
    // start a cancelled task, so their absence below is final.
    wait_outstanding(&ep, 0, "the endpoint to hold no tasks");
    for i in 0..2 {
        assert!(
            !files.join(format!("queued{i}.pid")).exists(),
            "cancelled queued task {i} ran"
        );
    }
    eprintln!("cancellation test took {:?}", started.elapsed());
}

/// The first task of `a_task_waiting_in_a_busy_workers_pipe_is_cancelled_without_running`:
/// writes its worker's pid, waits until the manager has written the next task
/// into its worker's pipe (bytes wait unread on one of the worker's pipes),
/// says so in `<pid_path>.next`, then holds its worker until `gate` exists.
const HOLD_UNTIL_GATE: &str = r#"def hold(pid_path, gate):
    import os, time, fcntl, termios, struct
    with open(pid_path + '.tmp', 'w') as f:
        f.write(str(os.getpid()))
    os.replace(pid_path + '.tmp', pid_path)
    def unread_pipe_bytes():
        n = 0
        for fd in os.listdir('/proc/self/fd'):
            try:
                if os.readlink('/proc/self/fd/' + fd).startswith('pipe:'):
                    buf = fcntl.ioctl(int(fd), termios.FIONREAD, b'\0' * 4)
                    n += struct.unpack('i', buf)[0]
            except OSError:
                pass
        return n
    deadline = time.monotonic() + 120
    while unread_pipe_bytes() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    open(pid_path + '.next', 'w').close()
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()
"#;

/// A task the manager has already written into a busy worker's pipe, behind
/// the running one, is cancelled: the running task finishes untouched, the
/// cancelled one never finishes (it may have begun: it was in the worker's
/// hands), and the slot goes on with a fresh worker. Each step waits for the
/// event it needs: the next task in the pipe (seen by the running task), the
/// manager's word that it will stop it, then the running task is released.
#[test]
fn a_task_waiting_in_a_busy_workers_pipe_is_cancelled_without_running() {
    let svc = Service::start();
    let token = svc.token("canceller");
    let name = format!("it-cancel-pipe-{}", std::process::id());
    let config = "[engine]\nmax_workers_per_node = 1\nprefetch_capacity = 1\n\
                  heartbeat_period = 0.5\nheartbeat_threshold = 10.0\n\
                  [provider]\ntype = \"local\"\ninit_blocks = 1\nmax_blocks = 1\n";
    let ep = Endpoint::new(&svc, &token, &name, config);
    ep.start();
    let files = temp_dir("cancel-pipe-files");
    let file = |n: &str| files.join(n).display().to_string();
    let hold = ep.register("hold", HOLD_UNTIL_GATE);
    let nap = ep.register("nap", NAP_WITH_PID);
    let running = ep
        .submit_json(&hold, &[json!([file("running.pid"), file("gate")])])
        .remove(0);
    let worker_pid = pid_in(&files.join("running.pid"), "the first task to start");
    let waiting = ep
        .submit_json(&nap, &[json!([file("waiting.pid"), 0])])
        .remove(0);
    wait_for(
        Duration::from_secs(60),
        "the second task to reach the busy worker's pipe",
        || files.join("running.pid.next").exists().then_some(()),
    );
    let r = post(
        &format!("{}/v3/tasks/{waiting}/cancel", svc.url),
        &token,
        json!({}),
    )
    .unwrap();
    assert_eq!(r["status"], "cancelled", "{r}");
    let logs = ep.dir().join("blocks");
    wait_for(
        Duration::from_secs(60),
        "the manager to take the cancel for the task in its worker's pipe",
        || {
            let said = format!("task {waiting} cancelled while waiting in slot");
            std::fs::read_dir(&logs)
                .ok()?
                .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
                .any(|log| log.contains(&said))
                .then_some(())
        },
    );
    std::fs::write(files.join("gate"), "").unwrap();

    let doc = ep.wait_all(std::slice::from_ref(&running), Duration::from_secs(60))[0].clone();
    assert_eq!(
        doc["status"], "success",
        "the running task is untouched: {doc}"
    );
    assert_eq!(doc["result"], format!("11\n{worker_pid}"), "{doc}");
    let after = ep
        .submit_json(&nap, &[json!([file("after.pid"), 0])])
        .remove(0);
    let doc = ep.wait_all(std::slice::from_ref(&after), Duration::from_secs(60))[0].clone();
    assert_eq!(doc["status"], "success", "{doc}");
    let after_pid = pid_in(&files.join("after.pid"), "the next task to start");
    assert_ne!(after_pid, worker_pid, "a fresh worker runs the next task");
    // It may have begun before the kill landed; if it got as far as writing
    // its pid, it was in the hands of the worker it was written to.
    if let Ok(text) = std::fs::read_to_string(files.join("waiting.pid")) {
        assert_eq!(
            text.trim(),
            worker_pid.to_string(),
            "only its worker began it"
        );
    }
    wait_gone(
        worker_pid,
        "the worker that began the cancelled task to die",
    );
    wait_outstanding(&ep, 0, "the endpoint to hold no tasks");
    let doc = ep.task(&waiting);
    assert_eq!(doc["status"], "cancelled", "it never finished: {doc}");
    assert_eq!(doc["exception_type"], "TaskCancelled", "{doc}");
}
