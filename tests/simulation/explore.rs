//! Seeded concurrency exploration: several actors (pushers, a deleter that also moves tags
//! and unlinks blobs, a collector running garbage collection and maintenance) share one
//! world, and a scheduler decides at every store call which of them goes on. Only one actor
//! runs between two store calls, so the seed alone decides the interleaving: the same seed
//! replays the same schedule (the stores' own threads aside). Faults are injected at random,
//! drawn from the same seed. The invariants are checked at the end.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

use crate::client::{Client, Content, Manifest};
use crate::faulty::Rng;
use crate::world::{Backend, World, base_options};

tokio::task_local! {
    static ACTOR: usize;
}

#[derive(Default)]
struct Actor {
    /// Waiting at a store call for its turn.
    parked: bool,
    /// Calls of the actor waiting for that turn (its own futures may race several).
    waiters: usize,
    /// Turns the actor was given.
    turns: u64,
    /// Calls of the actor in progress: further calls made meanwhile (by futures the actor
    /// runs side by side) go on in the same turn.
    in_call: usize,
}

#[derive(Default)]
struct Turns {
    /// Actors between two store calls (or off doing something that is not one).
    running: usize,
    actors: BTreeMap<usize, Actor>,
    /// Turns handed out.
    turns: u64,
}

/// Hands out turns at store calls, one actor at a time.
pub struct Scheduler {
    turns: Mutex<Turns>,
    /// Wakes the driver when an actor parks or ends.
    changed: Notify,
    /// Moves on every turn handed out.
    released: watch::Sender<u64>,
}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler {
            turns: Mutex::new(Turns::default()),
            changed: Notify::new(),
            released: watch::channel(0).0,
        }
    }
}

/// Takes a waiting call off the books if it is dropped before its turn comes (a `select!`
/// that took another branch); the actor runs again once none of its calls waits.
struct Waiting<'a> {
    scheduler: &'a Scheduler,
    actor: usize,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut turns = self.scheduler.lock();
        let mut unparked = false;
        if let Some(actor) = turns.actors.get_mut(&self.actor) {
            actor.waiters -= 1;
            if actor.waiters == 0 && actor.parked {
                actor.parked = false;
                unparked = true;
            }
        }
        if unparked {
            turns.running += 1;
        }
        drop(turns);
        self.scheduler.changed.notify_one();
    }
}

/// A call given its turn, in progress.
pub struct InCall {
    scheduler: Arc<Scheduler>,
    actor: usize,
}

impl Drop for InCall {
    fn drop(&mut self) {
        if let Some(actor) = self.scheduler.lock().actors.get_mut(&self.actor) {
            actor.in_call -= 1;
        }
    }
}

impl Scheduler {
    fn lock(&self) -> std::sync::MutexGuard<'_, Turns> {
        self.turns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the calling actor's turn; calls made outside an actor pass at once, and so
    /// do calls an actor makes while another of its calls is in progress.
    pub async fn turn(self: &Arc<Self>) -> Option<InCall> {
        let actor = ACTOR.try_with(|a| *a).ok()?;
        let mut released = self.released.subscribe();
        let turn = {
            let mut turns = self.lock();
            let state = turns.actors.entry(actor).or_default();
            if state.in_call > 0 {
                state.in_call += 1;
                return Some(InCall {
                    scheduler: Arc::clone(self),
                    actor,
                });
            }
            let newly = !state.parked;
            state.parked = true;
            state.waiters += 1;
            let turn = state.turns;
            if newly {
                turns.running -= 1;
            }
            turn
        };
        self.changed.notify_one();
        let waiting = Waiting {
            scheduler: self,
            actor,
        };
        loop {
            if self
                .lock()
                .actors
                .get(&actor)
                .is_some_and(|a| a.turns != turn)
            {
                break;
            }
            if released.changed().await.is_err() {
                break;
            }
        }
        {
            let mut turns = self.lock();
            if let Some(state) = turns.actors.get_mut(&actor) {
                state.waiters -= 1;
                state.in_call += 1;
            }
        }
        std::mem::forget(waiting);
        Some(InCall {
            scheduler: Arc::clone(self),
            actor,
        })
    }

    fn finished(&self) {
        self.lock().running -= 1;
        self.changed.notify_one();
    }

    /// Runs `actors` to their ends, letting one go on at a time in an order drawn from `rng`.
    async fn drive(
        self: &Arc<Self>,
        rng: &mut Rng,
        actors: Vec<futures::future::BoxFuture<'static, ()>>,
    ) -> Result<u64, String> {
        self.lock().running = actors.len();
        let mut handles = Vec::new();
        for (id, actor) in actors.into_iter().enumerate() {
            let scheduler = Arc::clone(self);
            handles.push(tokio::spawn(ACTOR.scope(id, async move {
                actor.await;
                scheduler.finished();
            })));
        }
        let mut stuck_since = Instant::now();
        loop {
            let released = {
                let mut turns = self.lock();
                if turns.running > 0 {
                    false
                } else {
                    let parked: Vec<usize> = turns
                        .actors
                        .iter()
                        .filter(|(_, a)| a.parked)
                        .map(|(id, _)| *id)
                        .collect();
                    if parked.is_empty() {
                        break;
                    }
                    let pick = parked[rng.below(parked.len() as u64) as usize];
                    let state = turns.actors.get_mut(&pick).expect("a parked actor");
                    state.parked = false;
                    state.turns += 1;
                    turns.running += 1;
                    turns.turns += 1;
                    true
                }
            };
            if released {
                self.released.send_modify(|v| *v += 1);
                stuck_since = Instant::now();
                continue;
            }
            if stuck_since.elapsed() > Duration::from_secs(60) {
                for handle in &handles {
                    handle.abort();
                }
                return Err("an actor neither reached a store call nor ended for 60 s \
                            (a deadlock between actors?)"
                    .to_owned());
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), self.changed.notified()).await;
        }
        for handle in handles {
            if let Err(e) = handle.await {
                return Err(format!("an actor panicked: {e}"));
            }
        }
        Ok(self.lock().turns)
    }
}

/// Layers shared among the images actors push, so that pushes deduplicate and mount.
fn layer(i: u64) -> Content {
    Content::random(3 * 1024 + (i as usize % 4) * 40 * 1024, 7_000 + i)
}

/// An image of the seed's config and two layers of the shared pool.
fn image(seed: u64) -> Manifest {
    Manifest::with_config(seed, vec![layer(seed % 5), layer(3 + seed % 4)])
}

async fn pusher(client: Arc<Client>, repo: &'static str, from: &'static str, mut rng: Rng) {
    for _ in 0..4 {
        let img = image(rng.below(6));
        let tag = ["latest", "v1", "v2"][rng.below(3) as usize];
        match rng.below(4) {
            0 => {
                for blob in &img.blobs {
                    client.mount(repo, blob, Some(from)).await;
                }
                client.push_manifest(repo, tag, &img).await;
            }
            1 => {
                client.push_monolithic(repo, &img.blobs[0]).await;
                for blob in &img.blobs[1..] {
                    client.push_chunked(repo, blob, 50 * 1024, false).await;
                }
                client.push_manifest(repo, tag, &img).await;
            }
            _ => client.push_image(repo, tag, &img).await,
        }
    }
}

async fn deleter(client: Arc<Client>, mut rng: Rng) {
    for _ in 0..4 {
        let live: Vec<(String, Manifest)> = client.live_manifests();
        if live.is_empty() {
            client.collect_garbage().await;
            continue;
        }
        let (repo, manifest) = live[rng.below(live.len() as u64) as usize].clone();
        match rng.below(3) {
            0 => client.delete_manifest(&repo, manifest.digest()).await,
            1 => {
                let blob = &manifest.blobs[rng.below(manifest.blobs.len() as u64) as usize];
                client.delete_blob(&repo, blob).await;
            }
            _ => {
                client
                    .push_manifest(
                        &repo,
                        ["latest", "v1", "v2"][rng.below(3) as usize],
                        &manifest,
                    )
                    .await
            }
        }
    }
}

async fn collector(client: Arc<Client>, mut rng: Rng) {
    for _ in 0..3 {
        if rng.below(3) == 0 {
            client.maintenance().await;
        } else {
            client.collect_garbage().await;
        }
    }
}

/// What a seed did: the store calls in the order they ran, and the faults injected.
#[derive(Debug, PartialEq, Eq)]
pub struct Trace {
    pub calls: Vec<&'static str>,
    pub faults: Vec<String>,
}

/// Runs one seed; its trace, or what failed.
pub async fn run_seed(backend: Backend, seed: u64, fault_rate: f64) -> Result<Trace, String> {
    let world = World::new(backend, base_options()).await;
    let client = Client::with_collector(Arc::clone(&world));
    let scheduler = Arc::new(Scheduler::default());
    world.faults.set_scheduler(Some(Arc::clone(&scheduler)));
    world.faults.arm_random(seed, fault_rate);
    let mut rng = Rng::new(seed);
    let actors: Vec<futures::future::BoxFuture<'static, ()>> = vec![
        Box::pin(pusher(
            Arc::clone(&client),
            "x/a",
            "x/b",
            Rng::new(rng.next()),
        )),
        Box::pin(pusher(
            Arc::clone(&client),
            "x/b",
            "x/a",
            Rng::new(rng.next()),
        )),
        Box::pin(deleter(Arc::clone(&client), Rng::new(rng.next()))),
        Box::pin(collector(Arc::clone(&client), Rng::new(rng.next()))),
    ];
    let driven = scheduler.drive(&mut rng, actors).await;
    world.faults.set_scheduler(None);
    let turns = driven?;
    let injected: Vec<String> = world
        .faults
        .injected()
        .iter()
        .map(|i| format!("{:?} at call {} ({})", i.fault, i.call, i.name))
        .collect();
    let calls = world.faults.call_log();
    let problems = crate::invariants::check(&world, &client).await;
    if problems.is_empty() {
        Ok(Trace {
            calls,
            faults: injected,
        })
    } else {
        Err(format!(
            "seed {seed} on {} ({turns} turns, faults {injected:?}, {} restarts):\n  {}",
            backend.name(),
            world.restarts(),
            problems.join("\n  ")
        ))
    }
}
