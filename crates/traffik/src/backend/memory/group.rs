//! Groups in memory: every member's key decided as one, all or nothing, under the members'
//! shard locks taken in one order (no deadlock whatever the members).

use smallvec::SmallVec;

use super::shard::{EXPIRY, Entry, Plan, ShardGuard, put_slot};
use super::{InMemoryBackend, PreparedKey};
use crate::backend::{GroupOperation, Mode};
use crate::error::BackendError;
use crate::strategy::{Input, Packed, PackedStep, Slot, StrategyHandle, Verdict};

impl InMemoryBackend {
    /// Decides prepared keys as one, synchronously (see [`Backend::decide_group`]): every shard
    /// involved is locked, in index order (so groups never wait on each other in a circle),
    /// every member is asked without writing, then, if all are admitted and there is room for
    /// their new keys, every member's decision is applied. Deterministic strategies answer the
    /// same twice, so the applied verdicts are the ones asked.
    pub(crate) fn decide_group_prepared(
        &self,
        members: &[(PreparedKey, &StrategyHandle, Input)],
        mode: Mode,
        verdicts: &mut Verdicts,
    ) -> Result<(), BackendError> {
        const SMALL: usize = 4;
        let n = members.len();
        // Working space on the stack for small groups (the common case), on the heap beyond.
        if n <= SMALL {
            if self.decide_group_known(members, mode, verdicts) {
                return Ok(());
            }
            let mut order = [0usize; SMALL];
            let mut guards: [Option<ShardGuard<'_>>; SMALL] = [const { None }; SMALL];
            let mut plans: [Plan; SMALL] = [const { Plan::Nothing }; SMALL];
            self.decide_group_in(members, mode, &mut order[..n], &mut guards[..n], &mut plans[..n], verdicts)
        } else {
            let mut guards = Vec::new();
            guards.resize_with(n, || None);
            let mut plans = Vec::new();
            plans.resize_with(n, || Plan::Nothing);
            self.decide_group_in(members, mode, &mut vec![0; n], &mut guards, &mut plans, verdicts)
        }
    }

    /// The common case of a small group, decided with less bookkeeping: every member's key is
    /// already stored with its state in the entry itself (no new key, no boxed state). `None`,
    /// having written nothing, when that does not hold: the general path decides.
    #[inline]
    pub(super) fn decide_group_known(
        &self,
        members: &[(PreparedKey, &StrategyHandle, Input)],
        mode: Mode,
        verdicts: &mut Verdicts,
    ) -> bool {
        const SMALL: usize = 4;
        let n = members.len();
        if n > SMALL {
            return false;
        }
        let shard_of = |key: PreparedKey| ((key.0 >> 32) as usize) & self.inner.shard_mask;
        // Each member's shard, and the distinct shards in index order (the locking order).
        let mut of = [0usize; SMALL];
        for (o, m) in of.iter_mut().zip(members) {
            *o = shard_of(m.0);
        }
        let mut order = of;
        let order = &mut order[..n];
        order.sort_unstable();
        let mut shards = 0;
        for i in 0..n {
            if i == 0 || order[i] != order[shards - 1] {
                order[shards] = order[i];
                shards += 1;
            }
        }
        let mut guards: [Option<ShardGuard<'_>>; SMALL] = [const { None }; SMALL];
        for (g, &i) in guards.iter_mut().zip(&order[..shards]) {
            *g = Some(self.inner.shards[i].0.lock());
        }
        // Which guard holds each member's shard.
        let mut guard = [0usize; SMALL];
        for (g, o) in guard.iter_mut().zip(&of[..n]) {
            *g = order[..shards].iter().position(|s| s == o).unwrap_or(0);
        }
        // Every member decided on its current state; what an admission writes is kept.
        let mut writes: [Option<(usize, Packed, u64)>; SMALL] = [None; SMALL];
        verdicts.clear();
        let mut admitted = true;
        for (i, &(key, strategy, ref input)) in members.iter().enumerate() {
            let Some(shard) = guards[guard[i]].as_deref_mut() else { return false };
            let now = input.now_us.min(EXPIRY - 1);
            let Some(bucket) = shard.table.find_bucket_index(key.0, |e| e.key == key.0) else { return false };
            let Some(e) = shard.table.get_bucket_mut(bucket) else { return false };
            if e.boxed() {
                return false;
            }
            let state = (e.expires_at() > now).then_some(Packed(e.state));
            let verdict = match strategy.decide_packed(state, input, true) {
                PackedStep::Kept(v) => v,
                PackedStep::Packed(v, state, ttl) => {
                    writes[i] = Some((bucket, state, now.saturating_add(ttl)));
                    v
                }
                PackedStep::Boxed(..) => return false,
            };
            admitted &= verdict.is_admitted();
            verdicts.push(verdict);
        }
        if mode == Mode::Consume && admitted {
            for (i, write) in writes[..n].iter().enumerate() {
                if let Some((bucket, state, expires_at)) = *write
                    && let Some(e) = guards[guard[i]].as_deref_mut().and_then(|s| s.table.get_bucket_mut(bucket))
                {
                    e.state = state.0;
                    e.set_expiry(expires_at, false);
                }
            }
        }
        true
    }

    /// [`decide_group_prepared`](Self::decide_group_prepared) with working space for one shard
    /// index, guard and plan per member.
    pub(super) fn decide_group_in<'s>(
        &'s self,
        members: &[(PreparedKey, &StrategyHandle, Input)],
        mode: Mode,
        order: &mut [usize],
        guards: &mut [Option<ShardGuard<'s>>],
        plans: &mut [Plan],
        verdicts: &mut Verdicts,
    ) -> Result<(), BackendError> {
        let shard_of = |key: PreparedKey| ((key.0 >> 32) as usize) & self.inner.shard_mask;
        for (o, m) in order.iter_mut().zip(members) {
            *o = shard_of(m.0);
        }
        order.sort_unstable();
        let mut shards = 0;
        for i in 0..order.len() {
            if i == 0 || order[i] != order[shards - 1] {
                order[shards] = order[i];
                shards += 1;
            }
        }
        let order = &order[..shards];
        for (g, &i) in guards.iter_mut().zip(order) {
            *g = Some(self.inner.shards[i].0.lock());
        }
        let guard_of = |key: PreparedKey| {
            if shards == 1 { 0 } else { order.binary_search(&shard_of(key)).unwrap_or(0) }
        };
        // Every member's shard is locked above; the error only keeps this path free of panics.
        let locked = || BackendError::command("memory", "a group member's shard was not locked");
        // Every member decided on its current state; what an admission would write is kept.
        verdicts.clear();
        let mut inserts = false;
        let mut admitted = true;
        for (&(key, strategy, ref input), plan) in members.iter().zip(plans.iter_mut()) {
            let Some(shard) = guards[guard_of(key)].as_deref_mut() else { return Err(locked()) };
            let (verdict, p) = shard.plan(key.0, strategy, input);
            inserts |= matches!(p, Plan::Insert(..));
            admitted &= verdict.is_admitted();
            verdicts.push(verdict);
            *plan = p;
        }
        if mode == Mode::Peek || !admitted {
            return Ok(());
        }
        if inserts {
            // Room for every new key before anything is written (a refusal then changes nothing).
            let mut new_keys: SmallVec<[usize; 4]> = smallvec::smallvec![0; shards];
            let spare: SmallVec<[u64; 4]> = members.iter().map(|m| m.0.0).collect();
            for (&(key, _, ref input), plan) in members.iter().zip(plans.iter()) {
                if let Plan::Insert(..) = plan {
                    let g = guard_of(key);
                    let Some(shard) = guards[g].as_deref_mut() else { return Err(locked()) };
                    shard.make_room(&self.inner, input.now_us.min(EXPIRY - 1), new_keys[g], &spare)?;
                    new_keys[g] += 1;
                }
            }
        }
        // In place first (bucket indexes stay valid until a key is inserted), then new keys.
        for (&(key, strategy, ref input), plan) in members.iter().zip(plans.iter_mut()) {
            let Some(shard) = guards[guard_of(key)].as_deref_mut() else { return Err(locked()) };
            match plan {
                Plan::Update { bucket, state, expires_at } => match shard.table.get_bucket_mut(*bucket) {
                    Some(e) if !e.boxed() => {
                        e.state = state.0;
                        e.set_expiry(*expires_at, false);
                    }
                    // Expired boxed state replaced by packed state: the box is released.
                    Some(e) => put_slot(&mut shard.boxes, e, Some(Slot::Packed(*state)), *expires_at),
                    None => {}
                },
                Plan::Again => {
                    self.decide_in(shard, key, strategy, input, Mode::Consume, 0)?;
                }
                Plan::Nothing | Plan::Insert(..) => {}
            }
        }
        if inserts {
            for (&(key, _, ref input), plan) in members.iter().zip(plans.iter_mut()) {
                if let Plan::Insert(slot, expires_at) = std::mem::replace(plan, Plan::Nothing) {
                    let Some(shard) = guards[guard_of(key)].as_deref_mut() else { return Err(locked()) };
                    shard.observe_insert(input.now_us.min(EXPIRY - 1));
                    let mut entry = Entry { key: key.0, meta: 0, state: [0; 2] };
                    put_slot(&mut shard.boxes, &mut entry, Some(slot), expires_at);
                    shard.table.insert_unique(key.0, entry, |e| e.key);
                }
            }
        }
        Ok(())
    }

    pub(super) fn decide_group_ops(&self, group: GroupOperation<'_>) -> Result<Vec<Verdict>, BackendError> {
        let members: SmallVec<[_; 4]> =
            group.ops.iter().map(|op| (self.prepare(op.key, op.strategy), op.strategy, op.input)).collect();
        let mode = group.ops.first().map_or(Mode::Consume, |op| op.mode);
        let mut verdicts = Verdicts::new();
        self.decide_group_prepared(&members, mode, &mut verdicts)?;
        Ok(verdicts.into_vec())
    }
}

/// A group's verdicts, in member order (groups of up to four stay off the heap).
pub(crate) type Verdicts = SmallVec<[Verdict; 4]>;
