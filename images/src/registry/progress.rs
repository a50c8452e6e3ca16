//! Progress of pulls and pushes: per-layer events (`{layer, downloaded, total,
//! phase}`) sent to a callback or a channel, and an `indicatif` renderer that draws
//! them as Docker-like bars. Owns event shapes and rendering; it must not do I/O on
//! registries or the store.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::digest::Digest;

/// Where a layer (or config) is in its pull or push.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Queued behind other transfers.
    Waiting,
    /// Bytes arriving (and, for layers, being unpacked as they arrive).
    Downloading,
    /// Download done; finishing unpack and verification.
    Extracting,
    /// A transient error; retrying after a back-off.
    Retrying,
    /// Already in the store (pull) or in the registry (push).
    AlreadyExists,
    /// Pulled and unpacked.
    PullComplete,
    /// Bytes leaving.
    Pushing,
    /// Pushed.
    Pushed,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Waiting => "Waiting",
            Phase::Downloading => "Downloading",
            Phase::Extracting => "Extracting",
            Phase::Retrying => "Retrying",
            Phase::AlreadyExists => "Already exists",
            Phase::PullComplete => "Pull complete",
            Phase::Pushing => "Pushing",
            Phase::Pushed => "Pushed",
        })
    }
}

/// One progress event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgressEvent {
    /// The blob (layer or config).
    pub layer: Digest,
    /// Bytes transferred so far.
    pub downloaded: u64,
    /// Total bytes, if known.
    pub total: Option<u64>,
    /// Phase.
    pub phase: Phase,
}

type Callback = dyn Fn(ProgressEvent) + Send + Sync;

/// A progress sink: nothing, a callback, or a channel. Cheap to clone.
#[derive(Clone, Default)]
pub struct Progress {
    sink: Option<Arc<Callback>>,
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Progress")
            .field("enabled", &self.sink.is_some())
            .finish()
    }
}

impl Progress {
    /// Discards events.
    pub fn none() -> Self {
        Self::default()
    }

    /// Calls `f` for every event (from transfer tasks: keep it quick).
    pub fn callback(f: impl Fn(ProgressEvent) + Send + Sync + 'static) -> Self {
        Self {
            sink: Some(Arc::new(f)),
        }
    }

    /// Sends events to an unbounded channel.
    pub fn channel() -> (Self, tokio::sync::mpsc::UnboundedReceiver<ProgressEvent>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (
            Self::callback(move |e| {
                let _ = tx.send(e);
            }),
            rx,
        )
    }

    /// Emits one event.
    pub fn emit(&self, layer: &Digest, downloaded: u64, total: Option<u64>, phase: Phase) {
        if let Some(s) = &self.sink {
            s(ProgressEvent {
                layer: layer.clone(),
                downloaded,
                total,
                phase,
            });
        }
    }

    /// A throttled reporter for one transfer.
    pub(crate) fn meter(&self, layer: &Digest, total: Option<u64>, phase: Phase) -> Meter {
        Meter {
            progress: self.clone(),
            layer: layer.clone(),
            total,
            phase,
            done: 0,
            last_bytes: 0,
            last_time: Instant::now(),
        }
    }
}

/// Reports bytes of one transfer at most every 256 KiB or 100 ms.
#[derive(Debug)]
pub(crate) struct Meter {
    progress: Progress,
    layer: Digest,
    total: Option<u64>,
    phase: Phase,
    done: u64,
    last_bytes: u64,
    last_time: Instant,
}

impl Meter {
    pub(crate) fn add(&mut self, n: u64) {
        self.done += n;
        if self.done.saturating_sub(self.last_bytes) >= 256 * 1024
            || self.last_time.elapsed() >= Duration::from_millis(100)
        {
            self.flush();
        }
    }

    pub(crate) fn set(&mut self, done: u64) {
        self.done = done;
    }

    pub(crate) fn flush(&mut self) {
        self.last_bytes = self.done;
        self.last_time = Instant::now();
        self.progress
            .emit(&self.layer, self.done, self.total, self.phase);
    }

    pub(crate) fn phase(&mut self, phase: Phase) {
        self.phase = phase;
        self.flush();
    }
}

/// Draws progress events as one bar per layer, the way `docker pull` does.
pub struct IndicatifRenderer {
    multi: MultiProgress,
    bars: HashMap<Digest, ProgressBar>,
    style: ProgressStyle,
}

impl IndicatifRenderer {
    /// Draws to stderr.
    pub fn new() -> Self {
        Self::with_target(ProgressDrawTarget::stderr())
    }

    /// Draws to `target` (hidden targets are useful in tests).
    pub fn with_target(target: ProgressDrawTarget) -> Self {
        let style =
            ProgressStyle::with_template("{prefix}: {msg:<16} [{bar:30}] {bytes}/{total_bytes}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        Self {
            multi: MultiProgress::with_draw_target(target),
            bars: HashMap::new(),
            style,
        }
    }

    /// Applies one event.
    pub fn handle(&mut self, e: &ProgressEvent) {
        let bar = self.bars.entry(e.layer.clone()).or_insert_with(|| {
            let b = self.multi.add(ProgressBar::new(e.total.unwrap_or(0)));
            b.set_style(self.style.clone());
            b.set_prefix(e.layer.short().to_owned());
            b
        });
        if let Some(t) = e.total {
            bar.set_length(t);
        }
        bar.set_position(e.downloaded);
        bar.set_message(e.phase.to_string());
        if matches!(
            e.phase,
            Phase::AlreadyExists | Phase::PullComplete | Phase::Pushed
        ) {
            bar.finish();
        }
    }

    /// The bar of one layer, if it has one.
    pub fn bar(&self, layer: &Digest) -> Option<&ProgressBar> {
        self.bars.get(layer)
    }

    /// Finishes all bars.
    pub fn finish(&self) {
        for b in self.bars.values() {
            if !b.is_finished() {
                b.finish();
            }
        }
    }
}

impl fmt::Debug for IndicatifRenderer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IndicatifRenderer")
            .field("bars", &self.bars.len())
            .finish()
    }
}

impl Default for IndicatifRenderer {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meter_throttles_and_flushes() {
        let (p, mut rx) = Progress::channel();
        let d = Digest::of_bytes(b"l");
        let mut m = p.meter(&d, Some(1 << 20), Phase::Downloading);
        for _ in 0..100 {
            m.add(1024);
        }
        // 100 KiB in well under 100 ms: no event yet.
        assert!(rx.try_recv().is_err());
        m.add(200 * 1024);
        let e = rx.try_recv().unwrap();
        assert_eq!(e.downloaded, 300 * 1024);
        assert_eq!(e.total, Some(1 << 20));
        m.phase(Phase::PullComplete);
        assert_eq!(rx.try_recv().unwrap().phase, Phase::PullComplete);
    }

    #[test]
    fn renderer_tracks_bars() {
        let mut r = IndicatifRenderer::with_target(ProgressDrawTarget::hidden());
        let d = Digest::of_bytes(b"l");
        r.handle(&ProgressEvent {
            layer: d.clone(),
            downloaded: 10,
            total: Some(100),
            phase: Phase::Downloading,
        });
        let b = r.bar(&d).unwrap();
        assert_eq!(b.position(), 10);
        assert_eq!(b.length(), Some(100));
        assert_eq!(b.message(), "Downloading");
        assert_eq!(b.prefix(), d.short());
        r.handle(&ProgressEvent {
            layer: d.clone(),
            downloaded: 100,
            total: Some(100),
            phase: Phase::PullComplete,
        });
        assert!(r.bar(&d).unwrap().is_finished());
        assert_eq!(Phase::AlreadyExists.to_string(), "Already exists");
    }
}
