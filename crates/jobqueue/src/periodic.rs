//! Periodic jobs from cron expressions, inserted once per time slot however
//! many processes run the schedule.
//!
//! A [`Schedule`] is a five-field cron expression (minute, hour, day of
//! month, month, day of week) evaluated in UTC. With the `postgres`
//! feature, a [`PeriodicScheduler`] runs next to the workers of every
//! process: at each slot it inserts the slot's job, and a primary key on
//! (schedule name, slot) in `steadfast_periodic_slots` makes sure that only
//! one process does, in the same transaction as the job itself. The slot
//! time is decided by the database clock.
//!
//! # Catch-up after downtime
//!
//! When no scheduler ran for a while, the slots in between were missed.
//! [`CatchUp`] says what happens to them when one starts again:
//! [`CatchUp::Latest`] (the default) inserts only the most recent missed
//! slot, [`CatchUp::All`] inserts up to `max` of the most recent ones,
//! [`CatchUp::Skip`] inserts none and waits for the next slot. A schedule
//! that never fired starts at its next slot.
//!
//! ```
//! use steadfast_jobqueue::Timestamp;
//! use steadfast_jobqueue::periodic::Schedule;
//!
//! let every_quarter_hour: Schedule = "*/15 * * * *".parse()?;
//! // 1970-01-01 00:07 UTC → the next slot is 00:15.
//! let next = every_quarter_hour.next_after(Timestamp::from_millis(7 * 60_000));
//! assert_eq!(next, Some(Timestamp::from_millis(15 * 60_000)));
//! # Ok::<(), steadfast_jobqueue::periodic::CronError>(())
//! ```

// Not yet: schedules are evaluated in UTC only (no time zones), and the
// durable scheduler exists for the PostgreSQL store only.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::clock::Timestamp;

/// A cron expression was malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CronError {
    /// The expression does not have five fields.
    #[error("a cron expression has 5 fields (minute hour day-of-month month day-of-week), got {0}")]
    FieldCount(usize),
    /// A field does not parse or is out of its range.
    #[error("cron field {field} is invalid at {text:?}: {reason}")]
    Field {
        /// Which field (minute, hour, ...).
        field: &'static str,
        /// The offending text.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// A cron schedule: the minutes (UTC) at which a periodic job is due.
///
/// Supports `*`, numbers, ranges `a-b`, lists `a,b`, steps `*/n` and
/// `a-b/n`, month and weekday names (`jan`, `mon`), 0 or 7 for Sunday, and
/// the aliases `@yearly`, `@monthly`, `@weekly`, `@daily` and `@hourly`. As
/// in classic cron, when both the day of month and the day of week are
/// restricted, a day matching either one is due.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Schedule {
    text: String,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    any_day: bool,
    any_weekday: bool,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Schedule").field(&self.text).finish()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Schedule {
    type Err = CronError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let expanded = match text.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(CronError::FieldCount(fields.len()));
        };

        let weekdays = parse_field(&WEEKDAY, weekday)?;
        Ok(Self {
            text: text.trim().to_owned(),
            minutes: parse_field(&MINUTE, minute)?,
            hours: parse_field(&HOUR, hour)?,
            days: parse_field(&DAY, day)?,
            months: parse_field(&MONTH, month)?,
            // Sunday is both 0 and 7.
            weekdays: (weekdays | (weekdays >> 7)) & 0x7f,
            any_day: day.starts_with('*'),
            any_weekday: weekday.starts_with('*'),
        })
    }
}

impl TryFrom<String> for Schedule {
    type Error = CronError;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Schedule> for String {
    fn from(schedule: Schedule) -> Self {
        schedule.text
    }
}

/// How far ahead [`Schedule::next_after`] looks before it gives up (a
/// schedule such as "30 Feb" never fires).
const SEARCH_DAYS: i64 = 366 * 8;

const MINUTES_PER_DAY: i64 = 24 * 60;
const MILLIS_PER_MINUTE: i64 = 60_000;

impl Schedule {
    /// The first slot strictly after `t`, or `None` if the schedule never
    /// fires (within eight years).
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let start = t
            .as_millis()
            .div_euclid(MILLIS_PER_MINUTE)
            .saturating_add(1);
        let first_day = start.div_euclid(MINUTES_PER_DAY);
        let first_minute = start.rem_euclid(MINUTES_PER_DAY);

        for day in first_day..first_day.saturating_add(SEARCH_DAYS) {
            if !self.day_matches(day) {
                continue;
            }
            let from = if day == first_day { first_minute } else { 0 };
            for minute_of_day in from..MINUTES_PER_DAY {
                let (hour, minute) = (minute_of_day / 60, minute_of_day % 60);
                if bit(self.hours, hour) && bit(self.minutes, minute) {
                    let minute_index = day * MINUTES_PER_DAY + minute_of_day;
                    return Some(Timestamp::from_millis(
                        minute_index.saturating_mul(MILLIS_PER_MINUTE),
                    ));
                }
            }
        }
        None
    }

    /// The latest slot at or before `t`, searching back no further than
    /// `since` (exclusive).
    pub fn latest_at_or_before(&self, t: Timestamp, since: Timestamp) -> Option<Timestamp> {
        let mut slots = self.slots_between(since, t);
        slots.pop()
    }

    /// The slots in `(after, until]`, oldest first. Bounded to 10,000.
    pub fn slots_between(&self, after: Timestamp, until: Timestamp) -> Vec<Timestamp> {
        let mut out = Vec::new();
        let mut cursor = after;
        while let Some(next) = self.next_after(cursor) {
            if next > until || out.len() >= 10_000 {
                break;
            }
            out.push(next);
            cursor = next;
        }
        out
    }

    fn day_matches(&self, day: i64) -> bool {
        let (_, month, day_of_month) = civil_from_days(day);
        if !bit(self.months, i64::from(month)) {
            return false;
        }
        // 1970-01-01 was a Thursday (4).
        let weekday = (day + 4).rem_euclid(7);
        let by_day = bit(self.days, i64::from(day_of_month));
        let by_weekday = bit(self.weekdays, weekday);
        match (self.any_day, self.any_weekday) {
            (false, false) => by_day || by_weekday,
            _ => by_day && by_weekday,
        }
    }
}

fn bit(set: u64, n: i64) -> bool {
    (0..64).contains(&n) && set & (1 << n) != 0
}

struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const MINUTE: FieldSpec = FieldSpec {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: FieldSpec = FieldSpec {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY: FieldSpec = FieldSpec {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: FieldSpec = FieldSpec {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
};
const WEEKDAY: FieldSpec = FieldSpec {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
};

fn parse_field(spec: &FieldSpec, text: &str) -> Result<u64, CronError> {
    let invalid = |part: &str, reason| CronError::Field {
        field: spec.name,
        text: part.to_owned(),
        reason,
    };
    let mut set = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| invalid(part, "the step is not a number"))?;
                if step == 0 {
                    return Err(invalid(part, "the step must be at least 1"));
                }
                (range, step)
            }
            None => (part, 1),
        };
        let (low, high) = if range == "*" {
            (spec.min, spec.max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(spec, a, part)?, value(spec, b, part)?)
        } else {
            let v = value(spec, range, part)?;
            // "5/15" means from 5 to the end in steps of 15.
            (v, if step > 1 { spec.max } else { v })
        };
        if low > high {
            return Err(invalid(part, "the range runs backwards"));
        }
        for v in (low..=high).step_by(step as usize) {
            set |= 1 << v;
        }
    }
    Ok(set)
}

fn value(spec: &FieldSpec, text: &str, part: &str) -> Result<u32, CronError> {
    let lower = text.to_ascii_lowercase();
    let v = match spec.names.iter().position(|n| *n == lower) {
        Some(i) => u32::try_from(i).unwrap_or(0) + if spec.min == 1 { 1 } else { 0 },
        None => text.parse().map_err(|_| CronError::Field {
            field: spec.name,
            text: part.to_owned(),
            reason: "not a number or a known name",
        })?,
    };
    if v < spec.min || v > spec.max {
        return Err(CronError::Field {
            field: spec.name,
            text: part.to_owned(),
            reason: "out of range",
        });
    }
    Ok(v)
}

/// The (year, month, day) of a day counted from 1970-01-01, in the
/// proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

/// What a scheduler does with slots missed while no scheduler ran.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CatchUp {
    /// Insert the most recent missed slot only: a job that should have run
    /// runs once, however long the downtime.
    #[default]
    Latest,
    /// Insert up to `max` of the most recent missed slots, oldest first.
    All {
        /// The most missed slots to insert.
        max: u32,
    },
    /// Insert none of the missed slots; wait for the next one.
    Skip,
}

#[cfg(feature = "postgres")]
pub use scheduler::{PeriodicBuilder, PeriodicScheduler};

#[cfg(feature = "postgres")]
mod scheduler {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;
    use tracing::{debug, warn};

    use super::{CatchUp, Schedule};
    use crate::clock::Timestamp;
    use crate::error::{BuildError, StoreError};
    use crate::job::{JobId, NewJob};
    use crate::store::Enqueued;
    use crate::store::postgres::PostgresStore;

    /// Inserts the jobs of cron schedules into a PostgreSQL queue, once per
    /// slot across all processes running the same schedules.
    ///
    /// Run one in every process that runs workers (each one is enough on
    /// its own; more only add redundancy):
    ///
    /// ```no_run
    /// # async fn demo(store: steadfast_jobqueue::PostgresStore) -> Result<(), Box<dyn std::error::Error>> {
    /// use steadfast_jobqueue::periodic::PeriodicScheduler;
    /// use steadfast_jobqueue::{JSON_CODEC, NewJob};
    /// use tokio_util::sync::CancellationToken;
    ///
    /// let report = NewJob::raw("nightly_report", JSON_CODEC, b"{}".to_vec());
    /// let scheduler = PeriodicScheduler::builder(store)
    ///     .schedule("nightly-report", "0 3 * * *", report)
    ///     .build()?;
    /// tokio::spawn(scheduler.run(CancellationToken::new()));
    /// # Ok(())
    /// # }
    /// ```
    pub struct PeriodicScheduler {
        store: PostgresStore,
        entries: Vec<Entry>,
        check_every: Duration,
    }

    impl std::fmt::Debug for PeriodicScheduler {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            let names: Vec<(&str, &Schedule)> = self
                .entries
                .iter()
                .map(|e| (e.name.as_str(), &e.schedule))
                .collect();
            f.debug_struct("PeriodicScheduler")
                .field("schedules", &names)
                .finish_non_exhaustive()
        }
    }

    struct Entry {
        name: String,
        schedule: Schedule,
        job: NewJob,
        catch_up: CatchUp,
    }

    /// Configures a [`PeriodicScheduler`].
    #[must_use = "a builder does nothing until built and run"]
    pub struct PeriodicBuilder {
        store: PostgresStore,
        entries: Vec<Entry>,
        error: Option<BuildError>,
        catch_up: CatchUp,
        check_every: Duration,
    }

    impl PeriodicBuilder {
        /// Adds a schedule: at each slot of `cron`, insert a copy of `job`
        /// due at the slot time. `name` identifies the schedule across
        /// processes and restarts; keep it stable.
        pub fn schedule(mut self, name: impl Into<String>, cron: &str, job: NewJob) -> Self {
            let name = name.into();
            match cron.parse::<Schedule>() {
                Ok(schedule) => self.entries.push(Entry {
                    name,
                    schedule,
                    job,
                    catch_up: self.catch_up,
                }),
                Err(e) => {
                    self.error
                        .get_or_insert(BuildError::Invalid(format!("schedule {name:?}: {e}")));
                }
            }
            self
        }

        /// Sets the catch-up policy of the schedules added after this call.
        /// Default [`CatchUp::Latest`].
        pub fn catch_up(mut self, policy: CatchUp) -> Self {
            self.catch_up = policy;
            self
        }

        /// Sets how often the scheduler looks for due slots at most; it
        /// also wakes at each next slot. Default 30 s.
        pub fn check_every(mut self, every: Duration) -> Self {
            self.check_every = every;
            self
        }

        /// Checks the schedules and makes the scheduler.
        ///
        /// # Errors
        ///
        /// [`BuildError::Invalid`] naming a malformed cron expression, an
        /// invalid job template, a name used twice, or a zero interval.
        pub fn build(self) -> Result<PeriodicScheduler, BuildError> {
            if let Some(error) = self.error {
                return Err(error);
            }
            if self.check_every.is_zero() {
                return Err(BuildError::Invalid(
                    "check_every must be longer than zero".to_owned(),
                ));
            }
            let mut names = std::collections::HashSet::new();
            for entry in &self.entries {
                if !names.insert(entry.name.as_str()) {
                    return Err(BuildError::Invalid(format!(
                        "schedule name {:?} is used twice",
                        entry.name
                    )));
                }
                entry
                    .job
                    .validate()
                    .map_err(|e| BuildError::Invalid(format!("schedule {:?}: {e}", entry.name)))?;
            }
            Ok(PeriodicScheduler {
                store: self.store,
                entries: self.entries,
                check_every: self.check_every,
            })
        }
    }

    impl PeriodicScheduler {
        /// Starts configuring a scheduler on `store`.
        pub fn builder(store: PostgresStore) -> PeriodicBuilder {
            PeriodicBuilder {
                store,
                entries: Vec::new(),
                error: None,
                catch_up: CatchUp::default(),
                check_every: Duration::from_secs(30),
            }
        }

        /// Inserts the jobs of every slot due now that no process inserted
        /// yet; returns the jobs this call inserted, per schedule name.
        ///
        /// # Errors
        ///
        /// [`StoreError`] if the database fails; slots already handled in
        /// this call stay inserted.
        pub async fn tick(&self) -> Result<Vec<(String, JobId)>, StoreError> {
            let mut inserted = Vec::new();
            for entry in &self.entries {
                for id in self.fire(entry).await? {
                    inserted.push((entry.name.clone(), id));
                }
            }
            Ok(inserted)
        }

        /// Runs [`PeriodicScheduler::tick`] at each slot (and at least every
        /// `check_every`) until `shutdown` fires. Database errors are logged
        /// and retried at the next check.
        ///
        /// # Cancel safety
        ///
        /// Each slot is inserted in one transaction: dropping the future
        /// leaves every slot either inserted with its job or not at all.
        pub async fn run(self, shutdown: CancellationToken) {
            loop {
                if let Err(error) = self.tick().await {
                    warn!(error = %crate::handler::chain(&error), "periodic jobs could not be inserted");
                }
                let wait = self.until_next_slot();
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => return,
                }
            }
        }

        fn until_next_slot(&self) -> Duration {
            use crate::store::Store;

            let now = self.store.now();
            self.entries
                .iter()
                .filter_map(|e| e.schedule.next_after(now))
                .map(|next| next.saturating_duration_since(now))
                .min()
                .map_or(self.check_every, |d| d.min(self.check_every))
                // Past the slot rather than just before it.
                .saturating_add(Duration::from_millis(5))
        }

        /// Handles one schedule under a per-schedule advisory lock, so that
        /// processes deciding at once see each other's slots.
        async fn fire(&self, entry: &Entry) -> Result<Vec<JobId>, StoreError> {
            let op = "periodic";
            let db = |e| StoreError::backend(op, e);
            let slots_table = format!("\"{}\".steadfast_periodic_slots", self.store.schema());
            let mut tx = self.store.pool().begin().await.map_err(db)?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext('steadfast_periodic:' || $1))")
                .bind(&entry.name)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            let now = self.store.clock_on(&mut tx).await?;
            let last: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT (extract(epoch FROM max(slot)) * 1000)::int8 FROM {slots_table} WHERE name = $1"
            )))
            .bind(&entry.name)
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;

            let due = due_slots(
                &entry.schedule,
                entry.catch_up,
                last.map(Timestamp::from_millis),
                now,
            );
            let mut inserted = Vec::new();
            for slot in due {
                let job = entry.job.clone().run_at(slot).unique_key(format!(
                    "periodic:{}:{}",
                    entry.name,
                    slot.as_millis()
                ));
                let outcome = self.store.enqueue_in(&mut tx, vec![job]).await?;
                let id = outcome.first().map(|o| o.id());
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {slots_table} (name, slot, job_id) \
                     VALUES ($1, to_timestamp($2::int8 / 1000.0), $3)"
                )))
                .bind(&entry.name)
                .bind(slot.as_millis())
                .bind(id.map(JobId::get))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                if let Some(Enqueued::Inserted(id)) = outcome.first().copied() {
                    debug!(schedule = %entry.name, slot = %slot, job.id = %id, "periodic job inserted");
                    inserted.push(id);
                }
            }
            tx.commit().await.map_err(db)?;
            Ok(inserted)
        }
    }

    /// The slots to insert now, given the last slot any process inserted.
    pub(super) fn due_slots(
        schedule: &Schedule,
        policy: CatchUp,
        last: Option<Timestamp>,
        now: Timestamp,
    ) -> Vec<Timestamp> {
        // A schedule that never fired starts with the slot of this minute,
        // if there is one, and otherwise waits for the next.
        let after =
            last.unwrap_or_else(|| Timestamp::from_millis(now.as_millis().saturating_sub(60_000)));
        let missed = schedule.slots_between(after, now);
        let Some(&latest) = missed.last() else {
            return Vec::new();
        };
        // A slot of the current minute is on time, not missed.
        let on_time = now.as_millis().saturating_sub(latest.as_millis()) < 60_000;
        match policy {
            CatchUp::Latest => vec![latest],
            CatchUp::Skip if on_time => vec![latest],
            CatchUp::Skip => Vec::new(),
            CatchUp::All { max } => {
                let keep = usize::try_from(max).unwrap_or(usize::MAX).max(1);
                missed[missed.len().saturating_sub(keep)..].to_vec()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE_MS: i64 = 60_000;
    const DAY_MS: i64 = 24 * 60 * MINUTE_MS;

    fn at(days: i64, hour: i64, minute: i64) -> Timestamp {
        Timestamp::from_millis(days * DAY_MS + (hour * 60 + minute) * MINUTE_MS)
    }

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        // 2000-02-29, a leap day in a century year divisible by 400.
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn steps_ranges_and_lists() {
        let s: Schedule = "5-20/5,45 * * * *".parse().unwrap();
        let slots = s.slots_between(at(0, 0, 0), at(0, 0, 59));
        let minutes: Vec<i64> = slots.iter().map(|t| t.as_millis() / MINUTE_MS).collect();
        assert_eq!(minutes, vec![5, 10, 15, 20, 45]);
    }

    #[test]
    fn next_is_strictly_after() {
        let s: Schedule = "0 * * * *".parse().unwrap();
        assert_eq!(s.next_after(at(0, 3, 0)), Some(at(0, 4, 0)));
        assert_eq!(
            s.next_after(Timestamp::from_millis(at(0, 3, 0).as_millis() - 1)),
            Some(at(0, 3, 0))
        );
    }

    #[test]
    fn weekdays_and_month_days() {
        // 1970-01-01 was a Thursday; the first Monday is 1970-01-05 (day 4).
        let mondays: Schedule = "30 9 * * mon".parse().unwrap();
        assert_eq!(mondays.next_after(at(0, 0, 0)), Some(at(4, 9, 30)));
        let sundays_as_seven: Schedule = "0 0 * * 7".parse().unwrap();
        assert_eq!(sundays_as_seven.next_after(at(0, 0, 0)), Some(at(3, 0, 0)));
        // Both restricted: the 10th or any Monday, whichever comes first.
        let either: Schedule = "0 0 10 * 1".parse().unwrap();
        assert_eq!(either.next_after(at(0, 0, 0)), Some(at(4, 0, 0)));
        assert_eq!(either.next_after(at(4, 0, 0)), Some(at(9, 0, 0)));
    }

    #[test]
    fn leap_day_schedule_waits_for_a_leap_year() {
        let s: Schedule = "0 0 29 feb *".parse().unwrap();
        // The first 29 February after 1970 is in 1972: day 789.
        assert_eq!(s.next_after(at(0, 0, 0)), Some(at(789, 0, 0)));
        let never: Schedule = "0 0 30 2 *".parse().unwrap();
        assert_eq!(never.next_after(at(0, 0, 0)), None);
    }

    #[test]
    fn aliases_and_errors_name_the_rule() {
        assert_eq!(
            "@hourly"
                .parse::<Schedule>()
                .unwrap()
                .next_after(at(0, 0, 1)),
            Some(at(0, 1, 0))
        );
        assert_eq!("* * *".parse::<Schedule>(), Err(CronError::FieldCount(3)));
        let err = "61 * * * *".parse::<Schedule>().unwrap_err();
        assert!(err.to_string().contains("minute"), "{err}");
        let err = "* * * * */0".parse::<Schedule>().unwrap_err();
        assert!(err.to_string().contains("step"), "{err}");
        let err = "* 5-2 * * *".parse::<Schedule>().unwrap_err();
        assert!(err.to_string().contains("backwards"), "{err}");
    }

    #[test]
    fn schedules_round_trip_through_serde() {
        let s: Schedule = "*/15 * * * *".parse().unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"*/15 * * * *\"");
        assert_eq!(serde_json::from_str::<Schedule>(&json).unwrap(), s);
        assert!(serde_json::from_str::<Schedule>("\"nope\"").is_err());
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn catch_up_policies_after_downtime() {
        use super::scheduler::due_slots;

        let every_minute: Schedule = "* * * * *".parse().unwrap();
        let last = Some(at(0, 1, 0));
        let now = Timestamp::from_millis(at(0, 1, 10).as_millis() + 30_000);
        assert_eq!(
            due_slots(&every_minute, CatchUp::Latest, last, now),
            vec![at(0, 1, 10)]
        );
        assert_eq!(
            due_slots(&every_minute, CatchUp::All { max: 3 }, last, now),
            vec![at(0, 1, 8), at(0, 1, 9), at(0, 1, 10)]
        );
        // The slot of this minute is on time, so even Skip inserts it.
        assert_eq!(
            due_slots(&every_minute, CatchUp::Skip, last, now),
            vec![at(0, 1, 10)]
        );
        let hourly: Schedule = "0 * * * *".parse().unwrap();
        assert!(due_slots(&hourly, CatchUp::Skip, Some(at(0, 0, 0)), at(0, 5, 30)).is_empty());
        // Never fired: no history to catch up on.
        assert!(due_slots(&hourly, CatchUp::Latest, None, at(0, 5, 30)).is_empty());
        assert_eq!(
            due_slots(&hourly, CatchUp::Latest, None, at(0, 5, 0)),
            vec![at(0, 5, 0)]
        );
    }
}
