//! Each user's recent throughput, for the dashboard's overview: tasks
//! finished and failed per second over the last minute and per minute over
//! the last hour, counted in memory as result batches are stored (one lock
//! per batch, never a query over the tasks table). A restart starts from
//! zero; users idle for an hour are forgotten, so memory follows the users
//! active in the last hour.

use std::collections::HashMap;
use std::sync::Mutex;

/// Seconds in the short ring, minutes in the long one.
const SLOTS: usize = 60;
/// Seconds over which "now" is averaged.
const NOW_WINDOW: u64 = 10;

/// Counts of one second or one minute.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Bucket {
    /// The second or minute (Unix time divided by its length) counted here.
    at: u64,
    finished: u64,
    failed: u64,
}

/// One user's two rings.
#[derive(Debug, Clone)]
struct Rings {
    seconds: [Bucket; SLOTS],
    minutes: [Bucket; SLOTS],
    last: u64,
}

impl Rings {
    fn new() -> Self {
        Rings {
            seconds: [Bucket::default(); SLOTS],
            minutes: [Bucket::default(); SLOTS],
            last: 0,
        }
    }

    fn add(ring: &mut [Bucket; SLOTS], at: u64, finished: u64, failed: u64) {
        let b = &mut ring[(at % SLOTS as u64) as usize];
        if b.at > at {
            // Older than what the slot holds (a result stamped late): it
            // fell out of the window already, and must not evict newer counts.
            return;
        }
        if b.at != at {
            *b = Bucket {
                at,
                ..Bucket::default()
            };
        }
        b.finished += finished;
        b.failed += failed;
    }
}

/// Recent throughput of every user active in the last hour.
#[derive(Default)]
pub struct Activity {
    users: Mutex<HashMap<i64, Rings>>,
}

/// What [`Activity::of`] answers: rates now, and the last hour by minute.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Recent {
    /// Tasks finished (failed ones included) per second, over the last 10 s.
    pub finished_per_second: f64,
    /// Of them, failed per second.
    pub failed_per_second: f64,
    /// The last 60 minutes, oldest first: (minute start, finished, failed).
    pub last_hour: Vec<(u64, u64, u64)>,
}

impl Activity {
    /// Counts `finished` tasks of `user` (`failed` of them failed) at Unix time `now`.
    pub fn record(&self, user: i64, now: f64, finished: u64, failed: u64) {
        if finished == 0 {
            return;
        }
        let second = now.max(0.0) as u64;
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if users.len() > 64 && second.is_multiple_of(60) {
            // Once a minute at most, with many users: forget the idle.
            users.retain(|_, r| r.last + 3600 > second);
        }
        let rings = users.entry(user).or_insert_with(Rings::new);
        Rings::add(&mut rings.seconds, second, finished, failed);
        Rings::add(&mut rings.minutes, second / 60, finished, failed);
        rings.last = second;
    }

    /// `user`'s recent throughput as of Unix time `now`.
    pub fn of(&self, user: i64, now: f64) -> Recent {
        let second = now.max(0.0) as u64;
        let minute = second / 60;
        let rings = self
            .users
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&user)
            .cloned()
            .unwrap_or_else(Rings::new);
        let window = second.saturating_sub(NOW_WINDOW - 1)..=second;
        let (finished, failed) = rings
            .seconds
            .iter()
            .filter(|b| window.contains(&b.at))
            .fold((0, 0), |(f, x), b| (f + b.finished, x + b.failed));
        let last_hour = (0..SLOTS as u64)
            .rev()
            .map(|back| {
                let at = minute.saturating_sub(back);
                let b = rings.minutes[(at % SLOTS as u64) as usize];
                let (f, x) = if b.at == at {
                    (b.finished, b.failed)
                } else {
                    (0, 0)
                };
                (at * 60, f, x)
            })
            .collect();
        Recent {
            finished_per_second: finished as f64 / NOW_WINDOW as f64,
            failed_per_second: failed as f64 / NOW_WINDOW as f64,
            last_hour,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_now_and_minutes_of_the_last_hour_per_user() {
        let a = Activity::default();
        let t = 1_700_000_000.0; // a minute boundary plus 20 s
        a.record(1, t, 50, 5);
        a.record(1, t + 1.0, 50, 0);
        a.record(2, t, 7, 7);
        a.record(1, t - 120.0, 30, 3); // two minutes earlier
        let r = a.of(1, t + 2.0);
        assert_eq!(r.finished_per_second, 10.0);
        assert_eq!(r.failed_per_second, 0.5);
        assert_eq!(r.last_hour.len(), 60);
        let minute = (t as u64 / 60) * 60;
        assert_eq!(*r.last_hour.last().unwrap(), (minute, 100, 5));
        assert_eq!(r.last_hour[57], (minute - 120, 30, 3));
        assert_eq!(a.of(2, t + 2.0).last_hour[59], (minute, 7, 7));
        // Ten seconds on, "now" is quiet; an hour on, the hour is empty.
        assert_eq!(a.of(1, t + 12.0).finished_per_second, 0.0);
        assert!(a.of(1, t + 3700.0).last_hour.iter().all(|m| m.1 == 0));
        assert_eq!(a.of(3, t).finished_per_second, 0.0);
    }

    #[test]
    fn idle_users_are_forgotten_when_there_are_many() {
        let a = Activity::default();
        for user in 0..100 {
            a.record(user, 1_000_000.0, 1, 0);
        }
        a.record(500, 1_000_000.0 + 7200.0 - (1_007_200 % 60) as f64, 1, 0);
        assert_eq!(a.users.lock().unwrap().len(), 1);
    }
}
