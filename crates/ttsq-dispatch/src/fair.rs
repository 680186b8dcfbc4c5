//! The scheduling rule: who gets the next free slots of a window.
//!
//! Pure and clock-free, so the rule itself is tested without a broker. Each
//! free slot goes to the tenant whose occupancy (tasks in flight plus slots
//! already given this round, divided by its weight) is lowest among those
//! with work waiting; ties go to the tenant served least this round, then to
//! the lower id. That one rule gives what fair sharing asks of it:
//!
//! - weights are honoured: in a window filled by tenants that all have work,
//!   each holds a share of the slots proportional to its weight, and since
//!   slots turn over as jobs finish, its share of throughput follows;
//! - nothing is reserved for the idle: a tenant with nothing waiting is
//!   never a candidate, so the busy ones share the whole window;
//! - a newcomer is served at once: its occupancy is zero, so it takes the
//!   very next free slot, however many tasks another tenant has waiting.
//!
//! Within a tenant, slots go to its lanes the same way (the lane with the
//! fewest tasks in flight first). A lane is a dialect's single jobs, or its
//! batch items: one tenant's dialects share its turns, and so do its single
//! jobs and its batches, so a tenant's own bulk batch does not hold its
//! interactive jobs either.

use std::{
    cmp::{Ordering, Reverse},
    collections::{BTreeMap, BinaryHeap},
};

use ttsq_store::LaneKey;
use uuid::Uuid;

/// One tenant's single jobs or batch items of one dialect, as a round
/// sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lane {
    /// The tenant.
    pub tenant_id: Uuid,
    /// The dialect.
    pub dialect: String,
    /// Batch items (true) or single jobs.
    pub batched: bool,
    /// The tenant's weight (at least 1).
    pub weight: u32,
    /// Its tasks published and not finished.
    pub in_flight: u64,
    /// Its tasks waiting to be published (possibly capped by the caller).
    pub waiting: u64,
}

/// A tenant's standing in the round.
struct Tenant<'a> {
    id: Uuid,
    weight: u64,
    /// In flight plus given this round.
    occupied: u64,
    given: u64,
    /// This tenant's lanes with something left to give.
    lanes: Vec<LaneState<'a>>,
}

struct LaneState<'a> {
    dialect: &'a str,
    batched: bool,
    occupied: u64,
    left: u64,
}

/// Heap entry ordering tenants by occupancy per weight (exactly, by
/// cross-multiplying), then by slots given this round, then by id.
struct Turn {
    occupied: u64,
    weight: u64,
    given: u64,
    id: Uuid,
    index: usize,
}

impl Turn {
    fn key(&self, other: &Self) -> Ordering {
        (u128::from(self.occupied) * u128::from(other.weight))
            .cmp(&(u128::from(other.occupied) * u128::from(self.weight)))
            .then(self.given.cmp(&other.given))
            .then(self.id.cmp(&other.id))
    }
}

impl PartialEq for Turn {
    fn eq(&self, other: &Self) -> bool {
        self.key(other) == Ordering::Equal
    }
}
impl Eq for Turn {}
impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key(other)
    }
}

/// Gives `free` slots of one window to `lanes`, in the order they should be
/// published (one entry per slot: publish the oldest waiting task of that
/// lane). Fewer are given when less is waiting.
pub fn allocate(lanes: &[Lane], free: u64) -> Vec<LaneKey> {
    let mut tenants: BTreeMap<Uuid, Tenant<'_>> = BTreeMap::new();
    for lane in lanes {
        let tenant = tenants.entry(lane.tenant_id).or_insert_with(|| Tenant {
            id: lane.tenant_id,
            weight: u64::from(lane.weight.max(1)),
            occupied: 0,
            given: 0,
            lanes: Vec::new(),
        });
        tenant.occupied += lane.in_flight;
        if lane.waiting > 0 {
            tenant.lanes.push(LaneState {
                dialect: &lane.dialect,
                batched: lane.batched,
                occupied: lane.in_flight,
                left: lane.waiting,
            });
        }
    }
    let mut tenants: Vec<Tenant<'_>> = tenants
        .into_values()
        .filter(|t| !t.lanes.is_empty())
        .collect();
    let mut heap: BinaryHeap<Reverse<Turn>> = tenants
        .iter()
        .enumerate()
        .map(|(index, t)| Reverse(turn(t, index)))
        .collect();
    let mut picks = Vec::new();
    while (picks.len() as u64) < free {
        let Some(Reverse(next)) = heap.pop() else {
            break;
        };
        let tenant = &mut tenants[next.index];
        let lane = tenant
            .lanes
            .iter_mut()
            .min_by_key(|l| l.occupied)
            .expect("a tenant in the heap has a lane with work left");
        lane.occupied += 1;
        lane.left -= 1;
        picks.push(LaneKey {
            tenant_id: tenant.id,
            dialect: lane.dialect.to_owned(),
            batched: lane.batched,
        });
        tenant.lanes.retain(|l| l.left > 0);
        tenant.occupied += 1;
        tenant.given += 1;
        if !tenant.lanes.is_empty() {
            heap.push(Reverse(turn(tenant, next.index)));
        }
    }
    picks
}

fn turn(tenant: &Tenant<'_>, index: usize) -> Turn {
    Turn {
        occupied: tenant.occupied,
        weight: tenant.weight,
        given: tenant.given,
        id: tenant.id,
        index,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    fn tenant(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn lane(t: u128, weight: u32, in_flight: u64, waiting: u64) -> Lane {
        Lane {
            tenant_id: tenant(t),
            dialect: "en-us".into(),
            batched: false,
            weight,
            in_flight,
            waiting,
        }
    }

    fn counts(picks: &[LaneKey]) -> HashMap<Uuid, u64> {
        let mut counts = HashMap::new();
        for pick in picks {
            *counts.entry(pick.tenant_id).or_default() += 1;
        }
        counts
    }

    #[test]
    fn an_empty_window_is_split_by_weight() {
        let picks = allocate(&[lane(1, 1, 0, 1000), lane(2, 2, 0, 1000)], 30);
        let counts = counts(&picks);
        assert_eq!(counts[&tenant(1)], 10);
        assert_eq!(counts[&tenant(2)], 20);
    }

    #[test]
    fn an_idle_tenants_share_goes_to_the_busy_ones() {
        // Tenant 3 has a large weight but nothing waiting.
        let picks = allocate(
            &[lane(1, 1, 0, 1000), lane(2, 1, 0, 1000), lane(3, 10, 0, 0)],
            40,
        );
        let counts = counts(&picks);
        assert_eq!(counts[&tenant(1)], 20);
        assert_eq!(counts[&tenant(2)], 20);
        assert!(!counts.contains_key(&tenant(3)));
    }

    #[test]
    fn a_tenant_with_little_waiting_leaves_the_rest_to_others() {
        let picks = allocate(&[lane(1, 1, 0, 3), lane(2, 1, 0, 1000)], 20);
        let counts = counts(&picks);
        assert_eq!(counts[&tenant(1)], 3);
        assert_eq!(counts[&tenant(2)], 17);
    }

    #[test]
    fn a_new_tenant_takes_the_next_free_slot_whatever_the_others_backlog() {
        // Tenant 1 holds 255 of 256 slots and has 100,000 more waiting.
        let picks = allocate(&[lane(1, 1, 255, 100_000), lane(2, 1, 0, 1)], 1);
        assert_eq!(picks[0].tenant_id, tenant(2));
    }

    #[test]
    fn the_first_slots_alternate_so_a_newcomer_is_not_published_last() {
        let picks = allocate(&[lane(1, 1, 0, 100), lane(2, 1, 0, 100)], 6);
        let order: Vec<u128> = picks.iter().map(|p| p.tenant_id.as_u128()).collect();
        assert_eq!(order, vec![1, 2, 1, 2, 1, 2]);
    }

    #[test]
    fn a_tenant_over_its_share_gets_nothing_until_the_others_catch_up() {
        // Tenant 1 got the whole window while alone; tenant 2 arrives.
        let picks = allocate(&[lane(1, 1, 90, 1000), lane(2, 1, 0, 1000)], 10);
        assert_eq!(counts(&picks)[&tenant(2)], 10);
    }

    #[test]
    fn a_tenants_dialects_share_its_turn() {
        let mut fr = lane(1, 1, 0, 100);
        fr.dialect = "fr-fr".into();
        let picks = allocate(&[lane(1, 1, 4, 100), fr], 6);
        let fr = picks.iter().filter(|p| p.dialect == "fr-fr").count();
        assert_eq!(fr, 5, "fr-fr catches up with en-us's 4 in flight first");
    }

    #[test]
    fn a_tenants_single_jobs_share_its_turn_with_its_own_batch() {
        // Tenant 1's batch holds 40 slots and has 1,000 more waiting; its
        // single job, submitted after, takes the tenant's next slot.
        let mut batch = lane(1, 1, 40, 1000);
        batch.batched = true;
        let picks = allocate(&[batch, lane(1, 1, 0, 1)], 1);
        assert!(!picks[0].batched, "{picks:?}");
    }

    #[test]
    fn nothing_waiting_gives_nothing() {
        assert!(allocate(&[lane(1, 1, 3, 0)], 10).is_empty());
        assert!(allocate(&[lane(1, 1, 0, 10)], 0).is_empty());
    }

    /// Turns a window over many times: every round a random subset of the
    /// in-flight tasks finishes and the free slots are allocated again.
    /// Each tenant's completed work then follows its weight.
    fn simulate(weights: &[u32], window: u64, rounds: usize, seed: u64) -> Vec<u64> {
        let mut in_flight = vec![0u64; weights.len()];
        let mut done = vec![0u64; weights.len()];
        let mut rng = seed;
        for _ in 0..rounds {
            for (i, flying) in in_flight.iter_mut().enumerate() {
                // Each in-flight task finishes this round with probability 1/4.
                let mut finished = 0;
                for _ in 0..*flying {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    if (rng >> 33).is_multiple_of(4) {
                        finished += 1;
                    }
                }
                *flying -= finished;
                done[i] += finished;
            }
            let lanes: Vec<Lane> = weights
                .iter()
                .enumerate()
                .map(|(i, w)| lane(i as u128 + 1, *w, in_flight[i], u64::MAX / 2))
                .collect();
            let free = window - in_flight.iter().sum::<u64>();
            for pick in allocate(&lanes, free) {
                in_flight[pick.tenant_id.as_u128() as usize - 1] += 1;
            }
        }
        done
    }

    #[test]
    fn over_many_rounds_throughput_follows_the_weights() {
        let done = simulate(&[1, 2, 5], 64, 2_000, 7);
        let unit = done[0] as f64;
        for (i, weight) in [1.0, 2.0, 5.0].iter().enumerate() {
            let ratio = done[i] as f64 / unit;
            assert!(
                (ratio - weight).abs() / weight < 0.05,
                "tenant {i}: {ratio:.2} × tenant 0's work for weight {weight} ({done:?})"
            );
        }
    }

    proptest! {
        #[test]
        fn picks_never_exceed_free_slots_or_waiting_work(
            lanes in proptest::collection::vec((1u128..6, 1u32..5, 0u64..50, 0u64..50), 0..12),
            free in 0u64..200,
        ) {
            let lanes: Vec<Lane> = lanes
                .into_iter()
                .map(|(t, w, i, q)| lane(t, w, i, q))
                .collect();
            let picks = allocate(&lanes, free);
            let waiting: u64 = lanes.iter().map(|l| l.waiting).sum();
            prop_assert_eq!(picks.len() as u64, free.min(waiting));
            let mut left: HashMap<(Uuid, String, bool), i64> = HashMap::new();
            for l in &lanes {
                *left.entry((l.tenant_id, l.dialect.clone(), l.batched)).or_default() += l.waiting as i64;
            }
            for p in &picks {
                let n = left.get_mut(&(p.tenant_id, p.dialect.clone(), p.batched)).unwrap();
                *n -= 1;
                prop_assert!(*n >= 0);
            }
        }
    }
}
