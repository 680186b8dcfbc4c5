//! Groups items by dialect and decides when a group is flushed: when it is
//! full, or when its oldest item has waited the window. Pure and clock-free
//! (callers pass `now`), so it is tested without sleeping.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

struct Group<T> {
    items: Vec<T>,
    opened: Instant,
}

/// Pending items per dialect.
pub struct DialectGroups<T> {
    groups: HashMap<String, Group<T>>,
    group_size: usize,
    window: Duration,
}

impl<T> DialectGroups<T> {
    /// Flushes groups at `group_size` items or after `window`.
    pub fn new(group_size: usize, window: Duration) -> Self {
        Self {
            groups: HashMap::new(),
            group_size: group_size.max(1),
            window,
        }
    }

    /// Adds an item; returns its group when that makes it full.
    pub fn push(&mut self, dialect: &str, item: T, now: Instant) -> Option<Vec<T>> {
        let group = self
            .groups
            .entry(dialect.to_owned())
            .or_insert_with(|| Group {
                items: Vec::with_capacity(self.group_size),
                opened: now,
            });
        group.items.push(item);
        if group.items.len() >= self.group_size {
            self.groups.remove(dialect).map(|g| g.items)
        } else {
            None
        }
    }

    /// When the oldest open group's window closes.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.groups.values().map(|g| g.opened + self.window).min()
    }

    /// Groups whose window has closed by `now`.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Vec<T>> {
        let expired: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, g)| g.opened + self.window <= now)
            .map(|(d, _)| d.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|d| self.groups.remove(&d).map(|g| g.items))
            .collect()
    }

    /// Every open group, for shutdown.
    pub fn drain(&mut self) -> Vec<Vec<T>> {
        self.groups.drain().map(|(_, g)| g.items).collect()
    }

    /// Items held across all groups.
    pub fn len(&self) -> usize {
        self.groups.values().map(|g| g.items.len()).sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_group_flushes_at_once_and_holds_one_dialect() {
        let mut b = DialectGroups::new(3, Duration::from_secs(1));
        let t = Instant::now();
        assert!(b.push("en-gb", 1, t).is_none());
        assert!(b.push("fr-fr", 2, t).is_none());
        assert!(b.push("en-gb", 3, t).is_none());
        assert_eq!(b.push("en-gb", 4, t), Some(vec![1, 3, 4]));
        assert_eq!(b.len(), 1);
    }

    #[test]
    fn a_group_flushes_when_its_window_closes() {
        let mut b = DialectGroups::new(100, Duration::from_millis(50));
        let t = Instant::now();
        b.push("en-gb", 1, t);
        b.push("yue", 2, t + Duration::from_millis(30));
        assert_eq!(b.next_deadline(), Some(t + Duration::from_millis(50)));
        assert!(b.take_expired(t + Duration::from_millis(49)).is_empty());
        assert_eq!(b.take_expired(t + Duration::from_millis(50)), vec![vec![1]]);
        assert_eq!(b.next_deadline(), Some(t + Duration::from_millis(80)));
        assert_eq!(b.drain(), vec![vec![2]]);
        assert!(b.is_empty());
        assert_eq!(b.next_deadline(), None);
    }
}
