//! Hedging (`hedge_policy.hedge_on_per_try_timeout`): an attempt that runs past its per-try timeout
//! is not cancelled; another attempt starts beside it (under the same retry policy, back-off and
//! retry budget), and the first answer that is not to be retried wins. A failed attempt is retried
//! as usual; when no retry is left, the attempts still running may yet answer. The attempts still
//! running when one wins are dropped, which resets them (Envoy's behaviour, checked against it).

use super::Retries;
use crate::http::ProxyError;
use crate::upstream::attempt::{Attempt, Attempted, UpstreamRequest};
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::pin::Pin;
use std::time::Duration;
use tower::retry::Policy;

type Outcome = Result<Attempted, ProxyError>;

/// Sends `request` with hedged attempts every `per_try` until one answers for good; the answer (or
/// the last failure) is the result.
pub async fn hedged(
    mut retries: Retries<'_>,
    attempt: Attempt<'_>,
    mut request: UpstreamRequest,
    per_try: Duration,
) -> Outcome {
    let mut running = FuturesUnordered::new();
    let send = |copy: UpstreamRequest| attempt.send(copy);
    match retries.clone_request(&request) {
        Some(copy) => running.push(send(copy)),
        // A body too big to send twice: one attempt, no hedge.
        None => return send(request).await,
    }
    let mut hedge_at: Option<Pin<Box<tokio::time::Sleep>>> = Some(Box::pin(tokio::time::sleep(per_try)));
    let mut next_attempt: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut last: Option<Outcome> = None;
    loop {
        tokio::select! {
            Some(mut outcome) = running.next() => {
                let final_answer = wins(&retries, &outcome);
                match retries.retry(&mut request, &mut outcome) {
                    Some(back_off) => {
                        next_attempt = Some(Box::pin(back_off));
                        hedge_at = None;
                        last = Some(outcome);
                    }
                    None if final_answer || running.is_empty() => return outcome,
                    // Out of retries but attempts still running: one of them may yet answer.
                    None => last = Some(outcome),
                }
            }
            () = fire(&mut hedge_at), if next_attempt.is_none() => {
                hedge_at = None;
                let mut timed_out: Outcome = Err(ProxyError::UpstreamPerTryTimeout);
                if let Some(back_off) = retries.retry(&mut request, &mut timed_out) {
                    next_attempt = Some(Box::pin(back_off));
                }
            }
            () = fire(&mut next_attempt) => {
                next_attempt = None;
                if let Some(copy) = retries.clone_request(&request) {
                    running.push(send(copy));
                    hedge_at = Some(Box::pin(tokio::time::sleep(per_try)));
                }
            }
        }
        if running.is_empty() && next_attempt.is_none() {
            // Every attempt that ran has answered (`last`); without one, the hedges timed out.
            return last.unwrap_or(Err(ProxyError::UpstreamPerTryTimeout));
        }
    }
}

/// Waits for a timer, or forever when there is none.
async fn fire(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(timer) => timer.await,
        None => std::future::pending().await,
    }
}

/// Whether an attempt's outcome is final (a response not to be retried).
fn wins(retries: &Retries<'_>, outcome: &Outcome) -> bool {
    match outcome {
        Ok(attempted) => {
            !retries.policy.retries_response(attempted.response.status().as_u16(), attempted.response.headers())
        }
        Err(_) => false,
    }
}
