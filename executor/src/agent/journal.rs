//! The agent's journal: a local SQLite file that holds every result until
//! the service acknowledges it, so a killed agent re-sends results instead
//! of re-running their tasks.
//!
//! Tasks themselves are not journaled: the service keeps every task until
//! its result is stored and re-sends all non-final ones to each new agent
//! connection, so a restarted agent gets back everything it had accepted.
//! Journaling them as well used to write each argument payload twice more
//! (WAL and checkpoint) on the hot path. Which tasks this agent is running
//! is kept in memory, to ignore the copies a reconnect re-sends.
//!
//! The file is opened with `locking_mode=EXCLUSIVE`: WAL then needs no shared
//! memory (so it works on NFS and Lustre home directories), and a second
//! agent for the same endpoint cannot open it.

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context as _;
use hpfaas_protocol::task::{TaskResult, TaskSpec};
use rusqlite::{params, Connection};
use uuid::Uuid;

/// The open journal.
pub struct Journal {
    db: Connection,
    /// Ids of tasks accepted by this agent and not finished yet.
    outstanding: HashSet<Uuid>,
    /// Ids of the results in the file (stored, not yet acknowledged).
    unacknowledged: HashSet<Uuid>,
}

impl Journal {
    /// Opens (creating if needed) the journal at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Journal> {
        let db = Connection::open(path)
            .with_context(|| format!("cannot open the journal {}", path.display()))?;
        // `tasks` and `functions` are what journals of earlier versions held;
        // the service re-sends those tasks, so they are dropped.
        db.execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS results (id TEXT PRIMARY KEY, result TEXT NOT NULL);
             DROP TABLE IF EXISTS tasks;
             DROP TABLE IF EXISTS functions;",
        )
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) => anyhow::anyhow!(
                "the journal {} is held by another agent for this endpoint",
                path.display()
            ),
            _ => anyhow::anyhow!("cannot initialise the journal {}: {e}", path.display()),
        })?;
        let mut unacknowledged = HashSet::new();
        {
            let mut stmt = db.prepare("SELECT id FROM results")?;
            for id in stmt.query_map([], |row| row.get::<_, String>(0))? {
                if let Ok(id) = Uuid::parse_str(&id?) {
                    unacknowledged.insert(id);
                }
            }
        }
        Ok(Journal {
            db,
            outstanding: HashSet::new(),
            unacknowledged,
        })
    }

    /// Takes new tasks; returns those not seen before (a re-sent task that
    /// is running here or has a result waiting for its acknowledgement is
    /// not run twice).
    pub fn accept(&mut self, tasks: Vec<TaskSpec>) -> Vec<TaskSpec> {
        let mut fresh = Vec::with_capacity(tasks.len());
        for t in tasks {
            if !self.unacknowledged.contains(&t.task_id) && self.outstanding.insert(t.task_id) {
                fresh.push(t);
            }
        }
        fresh
    }

    /// Stores results until the service acknowledges them.
    pub fn store_results(&mut self, results: &[TaskResult]) -> anyhow::Result<()> {
        let tx = self.db.transaction()?;
        {
            let mut put =
                tx.prepare_cached("INSERT OR REPLACE INTO results (id, result) VALUES (?1, ?2)")?;
            for r in results {
                put.execute(params![r.task_id.to_string(), serde_json::to_string(r)?])?;
            }
        }
        tx.commit()?;
        for r in results {
            self.outstanding.remove(&r.task_id);
            self.unacknowledged.insert(r.task_id);
        }
        Ok(())
    }

    /// Forgets results the service has made durable.
    pub fn forget_results(&mut self, task_ids: &[Uuid]) -> anyhow::Result<()> {
        let tx = self.db.transaction()?;
        {
            let mut del = tx.prepare_cached("DELETE FROM results WHERE id = ?1")?;
            for id in task_ids {
                del.execute([id.to_string()])?;
            }
        }
        tx.commit()?;
        for id in task_ids {
            self.unacknowledged.remove(id);
        }
        Ok(())
    }

    /// Stops counting cancelled tasks as outstanding. A result that still
    /// comes for one is stored and sent like any other (the service
    /// acknowledges and drops it).
    pub fn cancel(&mut self, task_ids: &[Uuid]) {
        for id in task_ids {
            self.outstanding.remove(id);
        }
    }

    /// Results the service has not acknowledged yet.
    pub fn unacknowledged(&self) -> anyhow::Result<Vec<TaskResult>> {
        let mut stmt = self.db.prepare("SELECT result FROM results")?;
        let rows = stmt.query_map([], |row| row.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(serde_json::from_str(&r?)?);
        }
        Ok(out)
    }

    /// Tasks accepted and not yet finished.
    pub fn outstanding(&self) -> u64 {
        self.outstanding.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hpfaas_protocol::task::Outcome;

    fn temp_path() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("hpfaas-journal-{}.db", Uuid::new_v4()))
    }

    fn task() -> TaskSpec {
        TaskSpec {
            task_id: Uuid::new_v4(),
            function_id: Uuid::new_v4(),
            payload: "p".into(),
            result_serializers: vec![],
            resource_spec: None,
        }
    }

    fn result(task_id: Uuid) -> TaskResult {
        TaskResult {
            task_id,
            outcome: Outcome::Success { result: "r".into() },
            completed_at: 1.0,
        }
    }

    #[test]
    fn results_survive_reopen_until_acknowledged() {
        let path = temp_path();
        let (a, b) = (task(), task());
        {
            let mut j = Journal::open(&path).unwrap();
            assert_eq!(j.accept(vec![a.clone(), b.clone()]).len(), 2);
            assert!(j.accept(vec![a.clone()]).is_empty(), "re-sent task ignored");
            j.store_results(&[result(a.task_id)]).unwrap();
            assert!(
                j.accept(vec![a.clone()]).is_empty(),
                "finished task not re-run"
            );
            assert_eq!(j.outstanding(), 1);
        }
        let mut j = Journal::open(&path).unwrap();
        assert_eq!(j.outstanding(), 0, "tasks are the service's to re-send");
        assert_eq!(j.unacknowledged().unwrap(), vec![result(a.task_id)]);
        assert!(
            j.accept(vec![a.clone()]).is_empty(),
            "a task whose result waits for its acknowledgement is not re-run"
        );
        assert_eq!(
            j.accept(vec![b.clone()]),
            vec![b.clone()],
            "re-sent task runs"
        );
        j.forget_results(&[a.task_id]).unwrap();
        assert!(j.unacknowledged().unwrap().is_empty());
        j.cancel(&[b.task_id, Uuid::new_v4()]);
        assert_eq!(
            j.outstanding(),
            0,
            "a cancelled task is no longer outstanding"
        );
        drop(j);
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn a_journal_of_an_earlier_version_opens() {
        let path = temp_path();
        {
            let db = Connection::open(&path).unwrap();
            db.execute_batch(
                "CREATE TABLE functions (id TEXT PRIMARY KEY, code TEXT NOT NULL);
                 CREATE TABLE tasks (id TEXT PRIMARY KEY, spec TEXT NOT NULL);
                 CREATE TABLE results (id TEXT PRIMARY KEY, result TEXT NOT NULL);
                 INSERT INTO tasks VALUES ('x', '{}');",
            )
            .unwrap();
        }
        let j = Journal::open(&path).unwrap();
        assert_eq!(j.outstanding(), 0);
        drop(j);
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn a_second_opener_is_refused() {
        let path = temp_path();
        let _first = Journal::open(&path).unwrap();
        let err = Journal::open(&path)
            .err()
            .expect("second open must fail")
            .to_string();
        assert!(err.contains("journal"), "{err}");
    }
}
