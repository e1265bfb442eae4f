//! The grabber's side of dispatch: the credits and epochs the supervisor handed out,
//! the groups that can run jobs, and what the grabber last reported of the store.
//!
//! The core ([`crate::supervision::Core`]) decides how many jobs each group may be given
//! and says so with [`Action::Grant`], [`Action::Revoke`] and [`Action::Poll`]; the grabber
//! keeps a [`Ledger`] of what it was told and claims no more than it holds. Both the
//! grabber process and the fault-test world keep this one ledger, so they cannot drift
//! apart.
//!
//! [`Action::Grant`]: crate::supervision::Action::Grant
//! [`Action::Revoke`]: crate::supervision::Action::Revoke
//! [`Action::Poll`]: crate::supervision::Action::Poll

use std::collections::{BTreeMap, BTreeSet};

/// What the grabber holds for one group: its credits, counted in one epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Account {
    epoch: u64,
    credits: u32,
}

/// The grabber's ledger: credits and their epochs per group, the runnable groups, the
/// hold, and the epoch of the store poll it reports on.
///
/// # Credits and epochs, as the core emits them
///
/// The core grants one credit per free worker of a group and stamps every
/// [`grant`](Self::grant) with the group's current epoch. To take credits back (a
/// shrink, a group closed, a shutdown) it moves the group to a fresh epoch and sends a
/// [`revoke`](Self::revoke) with it. Every claim carries the epoch of the credit it spent
/// ([`spend`](Self::spend)), so the core can tell a claim made with a credit it still
/// counts from one that raced a revoke.
///
/// Epochs of one group only ever rise: the core draws them from one counter for every
/// group, across a group's removal and return, and the channel to the grabber keeps
/// their order. So the ledger reads the epoch of a message as its age:
/// - a grant of the epoch held adds to the credits; a grant of a newer epoch replaces
///   them (what was held before was revoked); a grant of an older epoch is stale and
///   ignored;
/// - a revoke of the epoch held or a newer one takes back every credit and moves the
///   group to its epoch, where the grants that follow count from zero; a revoke of an
///   older epoch is stale and ignored, like a stale grant: obeying it would move the
///   group back to an epoch the core has left, and stamp claims with it.
///
/// A ledger knows nothing of a group it was told nothing about: no credits, epoch 0.
///
/// ```
/// use supervisor_core::ledger::Ledger;
///
/// let mut ledger = Ledger::new();
/// ledger.grant("x86", 2, 1);
/// ledger.grant("x86", 1, 1);
/// assert_eq!(ledger.credits("x86"), 3);
/// assert_eq!(ledger.spend("x86"), 1); // a claim in epoch 1
/// ledger.revoke("x86", 4);
/// ledger.grant("x86", 2, 1); // stale: sent before the revoke
/// assert_eq!((ledger.credits("x86"), ledger.epoch("x86")), (0, 4));
/// ledger.grant("x86", 1, 4);
/// assert_eq!(ledger.to_claim(["x86", "arm"]).unwrap()["x86"], 1);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    accounts: BTreeMap<String, Account>,
    /// The groups that can run jobs (`None`: every routed group, until told).
    runnable: Option<BTreeSet<String>>,
    /// Outcomes wait for the store: claim nothing.
    held: bool,
    /// The newest epoch the core asked the grabber to poll the store at.
    poll_epoch: u64,
    /// The last report sent: (epoch, empty).
    reported: Option<(u64, bool)>,
}

impl Ledger {
    /// A ledger of a grabber that was told nothing yet.
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// `n` more credits for `group` in `epoch` (see the type's docs for stale epochs).
    pub fn grant(&mut self, group: &str, n: u32, epoch: u64) {
        let a = self.account(group);
        if epoch > a.epoch {
            *a = Account { epoch, credits: n };
        } else if epoch == a.epoch {
            a.credits = a.credits.saturating_add(n);
        }
    }

    /// Every credit of `group` taken back, counting from `epoch` on (see the type's docs
    /// for stale epochs).
    pub fn revoke(&mut self, group: &str, epoch: u64) {
        let a = self.account(group);
        if epoch >= a.epoch {
            *a = Account { epoch, credits: 0 };
        }
    }

    /// Spend one credit of `group` on a claim, and return the epoch the claim carries.
    /// A group with no credit left has nothing to spend (a store claims no more than the
    /// credits [`to_claim`](Self::to_claim) gave it); its claim still carries its epoch.
    pub fn spend(&mut self, group: &str) -> u64 {
        match self.accounts.get_mut(group) {
            Some(a) => {
                a.credits = a.credits.saturating_sub(1);
                a.epoch
            }
            None => 0,
        }
    }

    /// The credits held for `group`.
    pub fn credits(&self, group: &str) -> u32 {
        self.accounts.get(group).map_or(0, |a| a.credits)
    }

    /// The epoch the credits of `group` are counted in.
    pub fn epoch(&self, group: &str) -> u64 {
        self.accounts.get(group).map_or(0, |a| a.epoch)
    }

    /// The groups that can run jobs now (with workers, neither disabled nor draining).
    /// Until this is first called, every group counts as runnable.
    pub fn set_runnable(&mut self, groups: impl IntoIterator<Item = String>) {
        self.runnable = Some(groups.into_iter().collect());
    }

    /// Whether jobs of `group` can run now.
    pub fn is_runnable(&self, group: &str) -> bool {
        self.runnable.as_ref().is_none_or(|set| set.contains(group))
    }

    /// Claim nothing (`true`: outcomes wait for the store, and running more jobs whose
    /// results cannot be recorded is pointless), or go on (`false`).
    pub fn hold(&mut self, on: bool) {
        self.held = on;
    }

    /// What to claim in a pass over the store, given the groups the routes name: every
    /// runnable one with its credits, none left included (the store counts the backlog
    /// of these groups only, so a group left out here does not keep the store from
    /// being empty). `None` while held: no pass at all.
    pub fn to_claim<'a>(
        &self,
        routed: impl IntoIterator<Item = &'a str>,
    ) -> Option<BTreeMap<String, u32>> {
        if self.held {
            return None;
        }
        let claim = routed
            .into_iter()
            .filter(|g| self.is_runnable(g))
            .map(|g| (g.to_string(), self.credits(g)))
            .collect();
        Some(claim)
    }

    /// The core asked for a poll of the store at `epoch` (an older epoch changes nothing).
    pub fn poll(&mut self, epoch: u64) {
        self.poll_epoch = self.poll_epoch.max(epoch);
    }

    /// A pass found the store `empty` of runnable jobs (or not): the epoch to report it
    /// with, or `None` when the core heard just that already. Reporting only news keeps
    /// an idle grabber from waking the supervisor at every poll.
    pub fn report(&mut self, empty: bool) -> Option<u64> {
        let report = (self.poll_epoch, empty);
        if self.reported == Some(report) {
            return None;
        }
        self.reported = Some(report);
        Some(self.poll_epoch)
    }

    /// A pass failed: the core forgets what the store was reported to hold, so the next
    /// report is news, whatever it says.
    pub fn forget_report(&mut self) {
        self.reported = None;
    }

    fn account(&mut self, group: &str) -> &mut Account {
        if !self.accounts.contains_key(group) {
            self.accounts.insert(group.to_string(), Account::default());
        }
        self.accounts.get_mut(group).expect("inserted above")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[test]
    fn grants_of_one_epoch_add_up_and_a_newer_epoch_replaces_them() {
        let mut l = Ledger::new();
        l.grant("a", 2, 3);
        l.grant("a", 1, 3);
        assert_eq!((l.credits("a"), l.epoch("a")), (3, 3));
        l.grant("a", 1, 5);
        assert_eq!((l.credits("a"), l.epoch("a")), (1, 5));
    }

    #[test]
    fn a_grant_older_than_the_epoch_held_is_ignored() {
        let mut l = Ledger::new();
        l.grant("a", 1, 5);
        l.grant("a", 4, 2);
        assert_eq!((l.credits("a"), l.epoch("a")), (1, 5));
    }

    #[test]
    fn a_revoke_takes_every_credit_back_and_grants_count_from_its_epoch() {
        let mut l = Ledger::new();
        l.grant("a", 3, 1);
        l.revoke("a", 2);
        assert_eq!((l.credits("a"), l.epoch("a")), (0, 2));
        l.grant("a", 1, 1);
        assert_eq!(l.credits("a"), 0, "granted before the revoke");
        l.grant("a", 2, 2);
        assert_eq!(l.credits("a"), 2);
    }

    #[test]
    fn a_revoke_at_the_epoch_held_takes_its_credits_back() {
        let mut l = Ledger::new();
        l.grant("a", 3, 4);
        l.revoke("a", 4);
        assert_eq!((l.credits("a"), l.epoch("a")), (0, 4));
    }

    #[test]
    fn a_stale_revoke_neither_moves_the_epoch_back_nor_takes_credits() {
        let mut l = Ledger::new();
        l.revoke("a", 6);
        l.grant("a", 2, 6);
        l.revoke("a", 3);
        assert_eq!((l.credits("a"), l.epoch("a")), (2, 6));
        assert_eq!(l.spend("a"), 6, "claims carry the newest epoch");
    }

    #[test]
    fn a_revoke_of_a_group_never_granted_sets_its_epoch() {
        let mut l = Ledger::new();
        l.revoke("a", 7);
        assert_eq!((l.credits("a"), l.epoch("a")), (0, 7));
    }

    #[test]
    fn spending_counts_down_to_zero_and_stamps_the_epoch() {
        let mut l = Ledger::new();
        l.grant("a", 2, 9);
        assert_eq!(l.spend("a"), 9);
        assert_eq!(l.spend("a"), 9);
        assert_eq!(l.credits("a"), 0);
        assert_eq!(l.spend("a"), 9, "nothing left: nothing spent");
        assert_eq!(l.credits("a"), 0);
        assert_eq!(l.spend("never told"), 0);
    }

    #[test]
    fn groups_are_counted_apart() {
        let mut l = Ledger::new();
        l.grant("a", 2, 1);
        l.grant("b", 5, 2);
        l.revoke("a", 3);
        assert_eq!((l.credits("a"), l.credits("b")), (0, 5));
        assert_eq!((l.epoch("a"), l.epoch("b")), (3, 2));
    }

    #[test]
    fn to_claim_names_every_routed_runnable_group_with_its_credits() {
        let mut l = Ledger::new();
        l.grant("a", 2, 1);
        let all = l.to_claim(["a", "b"]).unwrap();
        assert_eq!(all, BTreeMap::from([("a".into(), 2), ("b".into(), 0)]));
        l.set_runnable(["b".to_string(), "c".to_string()]);
        let some = l.to_claim(["a", "b"]).unwrap();
        assert_eq!(some, BTreeMap::from([("b".into(), 0)]));
        assert!(!l.is_runnable("a"));
        assert!(l.is_runnable("c"));
    }

    #[test]
    fn a_held_ledger_claims_nothing_until_let_go() {
        let mut l = Ledger::new();
        l.grant("a", 2, 1);
        l.hold(true);
        assert_eq!(l.to_claim(["a"]), None);
        l.hold(false);
        assert_eq!(l.to_claim(["a"]), Some(BTreeMap::from([("a".into(), 2)])));
    }

    #[test]
    fn only_news_is_reported() {
        let mut l = Ledger::new();
        assert_eq!(l.report(false), Some(0));
        assert_eq!(l.report(false), None);
        assert_eq!(l.report(true), Some(0));
        l.poll(4);
        assert_eq!(l.report(true), Some(4), "a new epoch is news");
        l.poll(2);
        assert_eq!(l.report(true), None, "an older poll changes nothing");
        l.forget_report();
        assert_eq!(
            l.report(true),
            Some(4),
            "after a failed pass, every report is news"
        );
    }

    /// A message from the core to the grabber, in the order the core emits them.
    #[derive(Clone, Debug)]
    enum Msg {
        Grant(u32, u64),
        Revoke(u64),
    }

    /// What the test drives: the core's side of one group, as `supervision` keeps it.
    #[derive(Clone, Debug)]
    enum Op {
        /// The core grants `n` credits in its current epoch.
        Grant(u32),
        /// The core revokes: a fresh epoch from its counter, nothing granted.
        Revoke,
        /// Another group's revoke or creation draws from the same counter.
        OtherEpoch,
        /// The next message reaches the grabber.
        Deliver,
        /// The grabber claims a job with a credit, if it holds one.
        Claim,
        /// The next claim reaches the core.
        Arrive,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (1u32..4).prop_map(Op::Grant),
            1 => Just(Op::Revoke),
            1 => Just(Op::OtherEpoch),
            4 => Just(Op::Deliver),
            3 => Just(Op::Claim),
            3 => Just(Op::Arrive),
        ]
    }

    proptest! {
        /// Against the core's bookkeeping, with messages and claims on the way both ways:
        /// what the grabber holds in the core's current epoch, plus its claims on the way
        /// in that epoch, is what the core counts as granted once every message arrived;
        /// the ledger's epoch never falls; a claim never carries an epoch the core has
        /// not reached.
        #[test]
        fn the_ledger_agrees_with_the_core(ops in prop::collection::vec(op(), 1..200)) {
            let mut ledger = Ledger::new();
            let (mut counter, mut epoch, mut granted) = (1u64, 1u64, 0u32);
            let mut to_grabber: VecDeque<Msg> = VecDeque::new();
            let mut to_core: VecDeque<u64> = VecDeque::new();
            let mut seen = 0u64;
            let mut told = false;
            let ops = ops.into_iter().chain(std::iter::repeat_n(Op::Deliver, 400));
            for op in ops {
                match op {
                    Op::Grant(n) => {
                        told = true;
                        granted += n;
                        to_grabber.push_back(Msg::Grant(n, epoch));
                    }
                    Op::Revoke => {
                        told = true;
                        counter += 1;
                        epoch = counter;
                        granted = 0;
                        to_grabber.push_back(Msg::Revoke(epoch));
                    }
                    Op::OtherEpoch => counter += 1,
                    Op::Deliver => match to_grabber.pop_front() {
                        Some(Msg::Grant(n, e)) => ledger.grant("g", n, e),
                        Some(Msg::Revoke(e)) => ledger.revoke("g", e),
                        None => {}
                    },
                    Op::Claim => {
                        if ledger.credits("g") > 0 {
                            let e = ledger.spend("g");
                            prop_assert!(e <= epoch);
                            to_core.push_back(e);
                        }
                    }
                    Op::Arrive => {
                        // The core counts a claim of its current epoch against the grant.
                        if to_core.pop_front() == Some(epoch) {
                            prop_assert!(granted > 0, "a claim the core never granted");
                            granted -= 1;
                        }
                    }
                }
                prop_assert!(ledger.epoch("g") >= seen, "the epoch fell");
                seen = ledger.epoch("g");
                if to_grabber.is_empty() {
                    let on_the_way = to_core.iter().filter(|&&e| e == epoch).count() as u32;
                    prop_assert_eq!(ledger.epoch("g"), if told { epoch } else { 0 });
                    prop_assert_eq!(ledger.credits("g") + on_the_way, granted);
                }
            }
        }
    }
}
