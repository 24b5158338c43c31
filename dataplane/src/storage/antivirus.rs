//! The antivirus hook as the upload pipeline sees it: a scanner reads the
//! same chunks the backend gets and answers with a [`Verdict`]. The clamd
//! INSTREAM client itself lives in `strata_storage::antivirus`; this is
//! the seam, so tests and deployments without clamd can plug their own.

use strata_storage::ByteStream;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    /// The signature name the scanner reported.
    Infected(String),
    /// Could not scan (scanner down, limits exceeded, stream failed): the
    /// bucket's upload fails closed unless configured otherwise.
    Failed(String),
}

#[async_trait::async_trait]
pub trait Scanner: Send + Sync + 'static {
    /// Reads `body` to its end (or until a verdict is certain).
    async fn scan(&self, body: ByteStream) -> Verdict;
}

/// The clamd INSTREAM client of `strata_storage` as a [`Scanner`].
#[async_trait::async_trait]
impl Scanner for strata_storage::antivirus::Scanner {
    async fn scan(&self, mut body: ByteStream) -> Verdict {
        use futures::StreamExt;
        use strata_storage::antivirus::Verdict as Clamd;
        let mut session = match self.start().await {
            Ok(session) => session,
            Err(error) => return Verdict::Failed(error.to_string()),
        };
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    // clamd stopped reading (its size limit): its answer,
                    // read by `finish`, says why.
                    if session.send(&chunk).await.is_err() {
                        break;
                    }
                }
                Err(error) => return Verdict::Failed(format!("upload stream failed: {error}")),
            }
        }
        match session.finish().await {
            Clamd::Clean => Verdict::Clean,
            Clamd::Infected(name) => Verdict::Infected(name),
            Clamd::Unscannable(why) => Verdict::Failed(why),
        }
    }
}
