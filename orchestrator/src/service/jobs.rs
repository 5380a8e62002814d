//! The service's recurring jobs, run by tokio-cron-scheduler: each only posts a [`Job`] to the
//! service loop, which does the work (one writer of the state). Deadlines are not among them:
//! the host records hold them, the store indexes them, and the loop checks the index every 100 ms.
//! The resend and stale jobs read only the hosts the store indexes for them (commands awaiting
//! an answer, agents silent for too long), never every record.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job as CronJob, JobScheduler};

use super::config::ServiceConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// Send again the commands no agent has answered.
    Reconcile,
    /// Mark the hosts whose agent has been silent too long.
    MarkStale,
    /// Drop what no longer affects the rules engine's decisions.
    Prune,
    /// Apply the retention of the audit trail and the API call log.
    Retention,
    /// Reload the rules if their directory changed.
    CheckRules,
}

/// Starts the scheduler with every job; a job whose previous post is still queued is skipped.
pub async fn start(config: &ServiceConfig, jobs: mpsc::Sender<Job>) -> Result<JobScheduler> {
    let scheduler = JobScheduler::new().await.context("cannot start the job scheduler")?;
    let every = |seconds: u64| Duration::from_secs(seconds.max(1));
    for (job, period) in [
        (Job::Reconcile, every(config.agents.resend_after_seconds.div_ceil(2))),
        (Job::MarkStale, every(config.agents.stale_after_seconds.div_ceil(4))),
        (Job::Prune, Duration::from_mins(1)),
        (Job::Retention, Duration::from_hours(1)),
        (Job::CheckRules, every(config.rules.poll_seconds)),
    ] {
        let jobs = jobs.clone();
        let cron = CronJob::new_repeated(period, move |_, _| {
            // Full queue: the loop is busy and the job will come round again.
            let _ = jobs.try_send(job);
        })
        .with_context(|| format!("cannot schedule {job:?}"))?;
        scheduler.add(cron).await.with_context(|| format!("cannot schedule {job:?}"))?;
    }
    scheduler.start().await.context("cannot start the job scheduler")?;
    Ok(scheduler)
}

/// What identifies a version of the rules directory: its files' names, sizes and modification
/// times. Polling this notices edits, new files, removals and the atomic directory swaps that
/// configuration managers (and Kubernetes `ConfigMaps`) make.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fingerprint(Vec<(String, u64, Option<SystemTime>)>);

impl Fingerprint {
    pub fn of(dir: &Path) -> Fingerprint {
        let Ok(entries) = std::fs::read_dir(dir) else { return Fingerprint::default() };
        let mut files: Vec<(String, u64, Option<SystemTime>)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                // Follows symbolic links, as loading the rules does.
                let metadata = std::fs::metadata(entry.path()).ok()?;
                Some((
                    entry.file_name().to_string_lossy().into_owned(),
                    metadata.len(),
                    metadata.modified().ok(),
                ))
            })
            .collect();
        files.sort();
        Fingerprint(files)
    }
}
