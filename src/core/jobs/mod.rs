//! The only place that knows about threads. Core functions are synchronous and take a [`JobCtx`]
//! (progress, custom events, cancel flag); [`spawn`] runs one on a named thread and delivers its
//! events through a bounded channel, always ending with [`JobEvent::Done`] or a reported panic.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

/// A shared cancel flag; cloning shares it.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A fresh, not-cancelled token.
    pub fn new() -> Self {
        Self::default()
    }
    /// Asks the job to stop at its next check.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    /// Clears the flag: a job that honoured a cancel of one stage (training) and goes on with the
    /// next (saving and embedding what it has) calls this, so a second cancel stops that stage.
    pub fn reset(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
    /// True once [`Self::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The error a job returns when it stopped because it was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// How far a job is.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// What the job is doing now ("tokenizing", "embedding", ...).
    pub stage: String,
    /// Units done.
    pub done: usize,
    /// Units in all.
    pub total: usize,
    /// Name of the unit ("texts", "steps").
    pub unit: &'static str,
    /// Seconds since the stage started.
    pub elapsed_secs: f64,
}

impl Progress {
    /// Units per second so far, once there is something to measure.
    pub fn rate_per_sec(&self) -> Option<f64> {
        (self.elapsed_secs > 0.0 && self.done > 0).then(|| self.done as f64 / self.elapsed_secs)
    }
    /// Estimated seconds left at the current rate.
    pub fn eta_secs(&self) -> Option<f64> {
        self.rate_per_sec()
            .map(|r| self.total.saturating_sub(self.done) as f64 / r)
    }
    /// Share done in [0, 1].
    pub fn fraction(&self) -> f32 {
        if self.total == 0 {
            1.0
        } else {
            (self.done as f32 / self.total as f32).min(1.0)
        }
    }
}

/// Something a running job reports before it is done.
#[derive(Debug, Clone)]
pub enum Update<M> {
    /// Progress of the current stage.
    Progress(Progress),
    /// A job-specific data point (a training step, an evaluation, ...).
    Point(M),
    /// A problem that did not stop the job.
    Warning(String),
}

/// What a running job sees: its cancel flag and where to send updates.
pub struct JobCtx<'a, M = ()> {
    cancel: CancelToken,
    emit: &'a (dyn Fn(Update<M>) + Sync),
}

impl<'a, M> JobCtx<'a, M> {
    /// A context that sends updates to `emit`.
    pub fn new(cancel: CancelToken, emit: &'a (dyn Fn(Update<M>) + Sync)) -> Self {
        Self { cancel, emit }
    }
    /// The cancel flag.
    pub fn cancel_token(&self) -> &CancelToken {
        &self.cancel
    }
    /// True once the job was asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
    /// `Err(Cancelled)` once the job was asked to stop.
    pub fn check_cancel(&self) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            Err(Cancelled)
        } else {
            Ok(())
        }
    }
    /// Reports progress.
    pub fn progress(&self, p: Progress) {
        (self.emit)(Update::Progress(p));
    }
    /// Reports a data point.
    pub fn point(&self, m: M) {
        (self.emit)(Update::Point(m));
    }
    /// Reports a warning.
    pub fn warn(&self, msg: impl Into<String>) {
        (self.emit)(Update::Warning(msg.into()));
    }
    /// A context for a sub-task with other data points, sharing cancel flag; its progress and
    /// warnings are forwarded, its points dropped.
    pub fn run_without_points<R>(&self, f: impl FnOnce(&JobCtx<'_, ()>) -> R) -> R {
        let forward = |u: Update<()>| match u {
            Update::Progress(p) => (self.emit)(Update::Progress(p)),
            Update::Warning(w) => (self.emit)(Update::Warning(w)),
            Update::Point(()) => {}
        };
        f(&JobCtx::new(self.cancel.clone(), &forward))
    }
}

/// Times a stage and builds its [`Progress`] values.
#[derive(Debug, Clone)]
pub struct StageClock {
    stage: String,
    unit: &'static str,
    total: usize,
    start: Instant,
}

impl StageClock {
    /// Starts timing a stage of `total` units.
    pub fn start(stage: impl Into<String>, unit: &'static str, total: usize) -> Self {
        Self {
            stage: stage.into(),
            unit,
            total,
            start: Instant::now(),
        }
    }
    /// The progress after `done` units.
    pub fn at(&self, done: usize) -> Progress {
        Progress {
            stage: self.stage.clone(),
            done,
            total: self.total,
            unit: self.unit,
            elapsed_secs: self.start.elapsed().as_secs_f64(),
        }
    }
}

/// How a spawned job ended.
#[derive(Debug)]
pub enum Outcome<T, E> {
    /// It returned.
    Finished(Result<T, E>),
    /// It panicked; the message is the panic payload.
    Panicked(String),
}

/// An event from a spawned job.
#[derive(Debug)]
pub enum JobEvent<M, T, E> {
    /// An update while it runs.
    Update(Update<M>),
    /// The end; always the last event.
    Done(Outcome<T, E>),
}

/// A running job. Dropping it cancels the job.
pub struct JobHandle<M, T, E> {
    name: String,
    cancel: CancelToken,
    rx: Receiver<JobEvent<M, T, E>>,
    finished: bool,
}

impl<M, T, E> JobHandle<M, T, E> {
    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Asks the job to stop at its next check.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }
    /// True once `Done` was received.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
    /// Takes every event waiting now, without blocking. A worker that vanished without `Done`
    /// (it cannot, since panics are caught, but a channel can close) is reported as a panic.
    pub fn drain(&mut self) -> Vec<JobEvent<M, T, E>> {
        let mut out = Vec::new();
        while !self.finished {
            match self.rx.try_recv() {
                Ok(ev) => {
                    self.finished = matches!(ev, JobEvent::Done(_));
                    out.push(ev);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.finished = true;
                    out.push(JobEvent::Done(Outcome::Panicked(format!(
                        "the {} worker stopped without reporting a result",
                        self.name
                    ))));
                }
            }
        }
        out
    }
    /// Blocks until the job is done, passing every update to `on_update`; returns the outcome.
    pub fn wait(mut self, mut on_update: impl FnMut(Update<M>)) -> Outcome<T, E> {
        loop {
            match self.rx.recv() {
                Ok(JobEvent::Update(u)) => on_update(u),
                Ok(JobEvent::Done(o)) => {
                    self.finished = true;
                    return o;
                }
                Err(_) => {
                    self.finished = true;
                    return Outcome::Panicked(format!(
                        "the {} worker stopped without reporting a result",
                        self.name
                    ));
                }
            }
        }
    }
}

impl<M, T, E> Drop for JobHandle<M, T, E> {
    fn drop(&mut self) {
        if !self.finished {
            self.cancel.cancel();
        }
    }
}

/// Capacity of a job's event channel; a worker waits when the reader falls this far behind.
const CHANNEL_CAPACITY: usize = 1024;

/// Runs `work` on a named thread. `wake` is called after each event (GUI: request a repaint).
pub fn spawn<M, T, E, F>(
    name: &str,
    wake: impl Fn() + Send + Sync + 'static,
    work: F,
) -> std::io::Result<JobHandle<M, T, E>>
where
    M: Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
    F: FnOnce(&JobCtx<'_, M>) -> Result<T, E> + Send + 'static,
{
    let (tx, rx) = mpsc::sync_channel(CHANNEL_CAPACITY);
    let cancel = CancelToken::new();
    let worker_cancel = cancel.clone();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let wake = Arc::new(wake);
            let tx_updates = std::sync::Mutex::new(tx.clone());
            let emit = |u: Update<M>| {
                if let Ok(tx) = tx_updates.lock() {
                    // A closed channel means nobody listens any more; the work goes on until cancelled.
                    let _ = tx.send(JobEvent::Update(u));
                }
                wake();
            };
            let ctx = JobCtx::new(worker_cancel, &emit);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&ctx)));
            let outcome = match result {
                Ok(r) => Outcome::Finished(r),
                Err(payload) => Outcome::Panicked(panic_message(&*payload)),
            };
            let _ = tx.send(JobEvent::Done(outcome));
            wake();
        })?;
    Ok(JobHandle {
        name: name.to_string(),
        cancel,
        rx,
        finished: false,
    })
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_then_done() {
        let h = spawn::<u32, u32, String, _>(
            "t",
            || {},
            |ctx| {
                ctx.point(1);
                ctx.point(2);
                Ok(3)
            },
        )
        .unwrap();
        let mut points = vec![];
        match h.wait(|u| {
            if let Update::Point(p) = u {
                points.push(p);
            }
        }) {
            Outcome::Finished(Ok(3)) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(points, vec![1, 2]);
    }

    #[test]
    fn panic_is_reported() {
        let h = spawn::<(), (), String, _>("boom", || {}, |_| panic!("kaputt")).unwrap();
        match h.wait(|_| {}) {
            Outcome::Panicked(m) => assert!(m.contains("kaputt")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn drop_cancels() {
        let (tx, rx) = mpsc::channel();
        let h = spawn::<(), (), Cancelled, _>(
            "spin",
            || {},
            move |ctx| {
                while !ctx.is_cancelled() {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                tx.send(()).unwrap();
                Err(Cancelled)
            },
        )
        .unwrap();
        drop(h);
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("job saw the cancel");
    }
}
