//! The token budget (DESIGN.md §5). `used` is what live workers have reserved, `consumed`
//! what finished workers spent this period, and `available = total − used − consumed`, never
//! negative. Every change holds `.locks/budget.lock` for the whole read-modify-write, which is
//! what the bash+jq version lacked (it lost most updates under concurrent spawns).

use crate::error::{Error, Result};
use crate::home::{Home, StateDir};
use crate::schema::{self, Kind};
use crate::spec;
use crate::store::{self, LockGuard};
use crate::time::{serde_ts, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `token-budget.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Budget {
    pub total: u64,
    pub used: u64,
    #[serde(default)]
    pub consumed: u64,
    pub available: u64,
    #[serde(default, with = "serde_ts::option")]
    pub period_start: Option<Timestamp>,
    #[serde(default, with = "serde_ts::option")]
    pub updated_at: Option<Timestamp>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Budget {
    /// A fresh budget of `total` tokens.
    pub fn new(total: u64, now: Timestamp) -> Budget {
        Budget {
            total,
            used: 0,
            consumed: 0,
            available: total,
            period_start: Some(now),
            updated_at: Some(now),
            extra: Map::new(),
        }
    }

    /// Re-derives `available` from the invariant.
    pub fn settle(&mut self) {
        self.available = self
            .total
            .saturating_sub(self.used)
            .saturating_sub(self.consumed);
    }

    /// Reserves `n` tokens, or fails with exit 4 leaving the budget unchanged.
    pub fn reserve(&mut self, n: u64) -> Result<()> {
        self.settle();
        if self.available < n {
            return Err(Error::Budget {
                need: n,
                available: self.available,
            });
        }
        self.used = self.used.saturating_add(n);
        self.settle();
        Ok(())
    }

    /// Releases a finished worker's reservation and books what it spent.
    pub fn release(&mut self, allocated: u64, spent: u64) {
        self.used = self.used.saturating_sub(allocated);
        self.consumed = self.consumed.saturating_add(spent);
        self.settle();
    }
}

/// The budget file held under its lock for a read-modify-write.
pub struct Locked {
    _guard: LockGuard,
    home: Home,
    pub budget: Budget,
}

impl Locked {
    /// Writes the budget back (validated, atomic) and keeps holding the lock.
    pub fn save(&mut self) -> Result<()> {
        self.budget.settle();
        self.budget.updated_at = Some(crate::time::now());
        write(&self.home, &self.budget)
    }
}

/// Takes the budget lock and reads the budget.
pub fn lock(home: &Home) -> Result<Locked> {
    let guard = store::lock(&home.budget_lock())?;
    let budget = read(home)?;
    Ok(Locked {
        _guard: guard,
        home: home.clone(),
        budget,
    })
}

/// Reads the budget without locking (for display).
pub fn read(home: &Home) -> Result<Budget> {
    let path = home.budget_path();
    let v = store::read_json(&path).map_err(|e| e.into_error(&path))?;
    schema::validate(Kind::TokenBudget, &v)?;
    serde_json::from_value(v).map_err(|e| Error::Invalid(format!("invalid token budget: {e}")))
}

fn write(home: &Home, b: &Budget) -> Result<()> {
    let v =
        serde_json::to_value(b).map_err(|e| Error::Internal(format!("serialise budget: {e}")))?;
    schema::validate(Kind::TokenBudget, &v)?;
    store::atomic_write(home, &home.budget_path(), &store::to_pretty(&v)?)
}

/// Sets up a budget of `total` tokens in a fresh home.
pub fn initialise(home: &Home, total: u64) -> Result<()> {
    let mut l = lock(home)?;
    let now = crate::time::now();
    l.budget.total = total;
    if l.budget.period_start.is_none() {
        l.budget.period_start = Some(now);
    }
    l.save()
}

/// What the specs say the budget should be.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Recount {
    pub used: u64,
    pub consumed: u64,
    pub live_workers: u64,
    pub finished_workers: u64,
    pub unreadable_specs: u64,
}

/// Sums reservations of live workers and spending of workers finished since `period_start`.
/// Call with the budget lock held so no reservation happens mid-count.
pub fn recount(home: &Home, period_start: Option<Timestamp>) -> Result<Recount> {
    let mut r = Recount {
        used: 0,
        consumed: 0,
        live_workers: 0,
        finished_workers: 0,
        unreadable_specs: 0,
    };
    for dir in StateDir::ALL {
        let (specs, bad) = spec::scan(home, dir)?;
        r.unreadable_specs += bad.len() as u64;
        for s in specs {
            if dir.is_live() {
                // Saturating: counts come from files anyone can edit (S5), and a wrapped
                // sum would "fix" a full budget back to empty.
                r.used = r.used.saturating_add(s.token_budget.allocated);
                r.live_workers += 1;
            } else {
                let in_period = match (period_start, s.finished_at()) {
                    (Some(p), Some(f)) => f >= p,
                    _ => true,
                };
                if in_period {
                    r.consumed = r.consumed.saturating_add(s.token_budget.used);
                    r.finished_workers += 1;
                }
            }
        }
    }
    Ok(r)
}

/// The difference a recalculation found.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    pub before: Budget,
    pub after: Budget,
    pub recount: Recount,
    pub used_drift: i64,
    pub consumed_drift: i64,
    pub available_drift: i64,
}

impl Drift {
    /// True when the file disagreed with the specs.
    pub fn any(&self) -> bool {
        self.used_drift != 0 || self.consumed_drift != 0 || self.available_drift != 0
    }
}

/// `a − b` as a signed count, saturated at the ends of `i64` (both may be near `u64::MAX`).
pub fn drift(a: u64, b: u64) -> i64 {
    let d = i128::from(a) - i128::from(b);
    i64::try_from(d).unwrap_or(if d < 0 { i64::MIN } else { i64::MAX })
}

/// Options for [`recalc`].
#[derive(Debug, Clone, Default)]
pub struct RecalcOptions {
    /// Report only; write nothing.
    pub check_only: bool,
    pub set_total: Option<u64>,
    pub reset_period: bool,
}

/// Recomputes `used` and `consumed` from the specs and (unless `check_only`) writes the fix.
pub fn recalc(home: &Home, opts: &RecalcOptions) -> Result<Drift> {
    let mut l = lock(home)?;
    let before = l.budget.clone();
    let now = crate::time::now();
    let mut after = before.clone();
    if let Some(t) = opts.set_total {
        after.total = t;
    }
    if opts.reset_period {
        after.period_start = Some(now);
    }
    let rc = recount(home, after.period_start)?;
    after.used = rc.used;
    after.consumed = rc.consumed;
    after.settle();
    let diff = drift;
    let drift = Drift {
        used_drift: diff(after.used, before.used),
        consumed_drift: diff(after.consumed, before.consumed),
        available_drift: diff(after.available, before.available),
        before,
        after: after.clone(),
        recount: rc,
    };
    if !opts.check_only {
        l.budget = after;
        l.save()?;
        let mut d = drift;
        d.after = l.budget.clone();
        return Ok(d);
    }
    Ok(drift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_saturates_at_the_ends_of_i64() {
        assert_eq!(drift(5, 7), -2);
        assert_eq!(drift(u64::MAX, 0), i64::MAX);
        assert_eq!(drift(0, u64::MAX), i64::MIN);
        assert_eq!(drift(u64::MAX, u64::MAX - 1), 1);
    }

    #[test]
    fn reserve_release_keep_the_invariant() {
        let mut b = Budget::new(1000, crate::time::now());
        b.reserve(600).unwrap();
        assert!(matches!(
            b.reserve(500),
            Err(Error::Budget {
                need: 500,
                available: 400
            })
        ));
        assert_eq!(b.used, 600);
        b.release(600, 150);
        assert_eq!((b.used, b.consumed, b.available), (0, 150, 850));
        b.release(10, 0);
        assert_eq!(b.used, 0, "never negative");
        assert_eq!(b.total, b.used + b.consumed + b.available);
    }
}
