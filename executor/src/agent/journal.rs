//! The agent's journal: a local SQLite file that holds every task accepted
//! from the service until its result is stored, and every result until the
//! service acknowledges it. A task is journaled before it is acknowledged, so
//! a killed agent loses nothing: on restart it re-runs journaled tasks and
//! re-sends unacknowledged results.
//!
//! The file is opened with `locking_mode=EXCLUSIVE`: WAL then needs no shared
//! memory (so it works on NFS and Lustre home directories), and a second
//! agent for the same endpoint cannot open it.

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context as _;
use hpfaas_protocol::task::{FunctionCode, TaskResult, TaskSpec};
use rusqlite::{params, Connection, OptionalExtension};
use uuid::Uuid;

/// The open journal.
pub struct Journal {
    db: Connection,
    /// Ids of journaled tasks without a result yet.
    outstanding: HashSet<Uuid>,
}

impl Journal {
    /// Opens (creating if needed) the journal at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Journal> {
        let db = Connection::open(path)
            .with_context(|| format!("cannot open the journal {}", path.display()))?;
        db.execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS functions (id TEXT PRIMARY KEY, code TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS tasks (id TEXT PRIMARY KEY, spec TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS results (id TEXT PRIMARY KEY, result TEXT NOT NULL);",
        )
        .map_err(|e| match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy) => anyhow::anyhow!(
                "the journal {} is held by another agent for this endpoint",
                path.display()
            ),
            _ => anyhow::anyhow!("cannot initialise the journal {}: {e}", path.display()),
        })?;
        let mut outstanding = HashSet::new();
        {
            let mut stmt = db.prepare("SELECT id FROM tasks")?;
            for id in stmt.query_map([], |row| row.get::<_, String>(0))? {
                if let Ok(id) = Uuid::parse_str(&id?) {
                    outstanding.insert(id);
                }
            }
        }
        Ok(Journal { db, outstanding })
    }

    /// Journals new tasks and their functions; returns the tasks not seen
    /// before (a re-sent task that is journaled or already has a result is
    /// not run twice).
    pub fn accept(
        &mut self,
        functions: &[FunctionCode],
        tasks: Vec<TaskSpec>,
    ) -> anyhow::Result<Vec<TaskSpec>> {
        let tx = self.db.transaction()?;
        let mut fresh = Vec::with_capacity(tasks.len());
        {
            let mut put_fn =
                tx.prepare_cached("INSERT OR REPLACE INTO functions (id, code) VALUES (?1, ?2)")?;
            for f in functions {
                put_fn.execute(params![f.function_id.to_string(), f.code])?;
            }
            let mut has_result = tx.prepare_cached("SELECT 1 FROM results WHERE id = ?1")?;
            let mut put_task = tx.prepare_cached("INSERT INTO tasks (id, spec) VALUES (?1, ?2)")?;
            for t in tasks {
                if self.outstanding.contains(&t.task_id) {
                    continue;
                }
                let id = t.task_id.to_string();
                if has_result
                    .query_row([&id], |_| Ok(()))
                    .optional()?
                    .is_some()
                {
                    continue;
                }
                put_task.execute(params![id, serde_json::to_string(&t)?])?;
                fresh.push(t);
            }
        }
        tx.commit()?;
        self.outstanding.extend(fresh.iter().map(|t| t.task_id));
        Ok(fresh)
    }

    /// Stores results (replacing their tasks) until the service acknowledges them.
    pub fn store_results(&mut self, results: &[TaskResult]) -> anyhow::Result<()> {
        let tx = self.db.transaction()?;
        {
            let mut put =
                tx.prepare_cached("INSERT OR REPLACE INTO results (id, result) VALUES (?1, ?2)")?;
            let mut del = tx.prepare_cached("DELETE FROM tasks WHERE id = ?1")?;
            for r in results {
                let id = r.task_id.to_string();
                put.execute(params![id, serde_json::to_string(r)?])?;
                del.execute([&id])?;
            }
        }
        tx.commit()?;
        for r in results {
            self.outstanding.remove(&r.task_id);
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
        Ok(())
    }

    /// Drops cancelled tasks that have no result yet, so a restarted agent
    /// does not run them again. A result that still comes for one is stored
    /// and sent like any other (the service acknowledges and drops it).
    pub fn cancel(&mut self, task_ids: &[Uuid]) -> anyhow::Result<()> {
        let tx = self.db.transaction()?;
        {
            let mut del = tx.prepare_cached("DELETE FROM tasks WHERE id = ?1")?;
            for id in task_ids {
                del.execute([id.to_string()])?;
            }
        }
        tx.commit()?;
        for id in task_ids {
            self.outstanding.remove(id);
        }
        Ok(())
    }

    /// Journaled tasks without results, with the code of their functions.
    pub fn pending(&self) -> anyhow::Result<(Vec<FunctionCode>, Vec<TaskSpec>)> {
        let mut tasks = Vec::new();
        let mut stmt = self.db.prepare("SELECT spec FROM tasks")?;
        for spec in stmt.query_map([], |row| row.get::<_, String>(0))? {
            tasks.push(serde_json::from_str::<TaskSpec>(&spec?)?);
        }
        let needed: HashSet<Uuid> = tasks.iter().map(|t| t.function_id).collect();
        let mut functions = Vec::new();
        let mut stmt = self.db.prepare("SELECT id, code FROM functions")?;
        for row in stmt.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })? {
            let (id, code) = row?;
            if let Ok(function_id) = Uuid::parse_str(&id) {
                if needed.contains(&function_id) {
                    functions.push(FunctionCode { function_id, code });
                }
            }
        }
        Ok((functions, tasks))
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

    fn task(function_id: Uuid) -> TaskSpec {
        TaskSpec {
            task_id: Uuid::new_v4(),
            function_id,
            payload: "p".into(),
            result_serializers: vec![],
            resource_spec: None,
        }
    }

    #[test]
    fn survives_reopen_and_drops_duplicates() {
        let path = temp_path();
        let f = Uuid::new_v4();
        let code = FunctionCode {
            function_id: f,
            code: "c".into(),
        };
        let (a, b) = (task(f), task(f));
        {
            let mut j = Journal::open(&path).unwrap();
            assert_eq!(
                j.accept(std::slice::from_ref(&code), vec![a.clone(), b.clone()])
                    .unwrap()
                    .len(),
                2
            );
            assert!(
                j.accept(&[], vec![a.clone()]).unwrap().is_empty(),
                "re-sent task ignored"
            );
            let r = TaskResult {
                task_id: a.task_id,
                outcome: Outcome::Success { result: "r".into() },
                completed_at: 1.0,
            };
            j.store_results(std::slice::from_ref(&r)).unwrap();
            assert!(
                j.accept(&[], vec![a.clone()]).unwrap().is_empty(),
                "finished task not re-run"
            );
            assert_eq!(j.outstanding(), 1);
        }
        let mut j = Journal::open(&path).unwrap();
        let (functions, tasks) = j.pending().unwrap();
        assert_eq!(functions, vec![code]);
        assert_eq!(tasks, vec![b.clone()]);
        assert_eq!(j.unacknowledged().unwrap().len(), 1);
        j.forget_results(&[a.task_id]).unwrap();
        assert!(j.unacknowledged().unwrap().is_empty());
        j.cancel(&[b.task_id, Uuid::new_v4()]).unwrap();
        assert_eq!(
            j.outstanding(),
            0,
            "a cancelled task is no longer outstanding"
        );
        assert!(
            j.pending().unwrap().1.is_empty(),
            "nor re-run after a restart"
        );
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
