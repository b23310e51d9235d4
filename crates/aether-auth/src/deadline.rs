//! The caller's deadline, carried from service to service.
//!
//! A server runs each call inside the deadline its `grpc-timeout` header gives
//! ([`DeadlineLayer`]); every call that call makes to another service (a coordinator reading
//! its store, forwarding to a holder) sends what remains of it ([`AttachToken`] adds the
//! header, and tonic's channel enforces it locally too), so a store or bus never works on for
//! a caller that has given up, and a slow store fails the call by the caller's deadline rather
//! than at an arbitrary later time. Calls made outside any request (background workers) keep
//! their own timeouts.
//!
//! [`AttachToken`]: crate::AttachToken

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;
use tonic::Status;
use tower::{Layer, Service};

/// The gRPC header that carries a call's timeout.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

tokio::task_local! {
    static DEADLINE: Instant;
}

/// The deadline of the call this task serves, if its caller set one.
pub fn current() -> Option<Instant> {
    DEADLINE.try_with(|deadline| *deadline).ok()
}

/// Runs `future` with `deadline` as the current call's deadline ([`current`]).
pub async fn scope<F: Future>(deadline: Option<Instant>, future: F) -> F::Output {
    match deadline {
        Some(deadline) => DEADLINE.scope(deadline, future).await,
        None => future.await,
    }
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (H, M, S, m, u, n), as the
/// gRPC HTTP/2 protocol defines it. Anything else is None (treated as no timeout, as tonic
/// does).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// A `grpc-timeout` value for `timeout`, in the finest unit that fits in 8 digits (rounded
/// down, so the callee never waits longer than the caller).
pub fn grpc_timeout_value(timeout: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let units: [(u128, &str); 6] = [
        (timeout.as_nanos(), "n"),
        (timeout.as_micros(), "u"),
        (timeout.as_millis(), "m"),
        (u128::from(timeout.as_secs()), "S"),
        (u128::from(timeout.as_secs() / 60), "M"),
        (u128::from(timeout.as_secs() / 3600), "H"),
    ];
    let (amount, unit) = units
        .into_iter()
        .find(|(amount, _)| *amount <= MAX)
        .unwrap_or((MAX, "H"));
    format!("{amount}{unit}")
}

/// A request that gives the callee `timeout` (as its `grpc-timeout`; tonic's channel enforces
/// it too). A caller's shorter deadline still wins ([`propagate`]).
pub fn request_within<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Sets an outgoing call's `grpc-timeout` to what remains of the current call's deadline
/// (or keeps the call's own timeout when that is shorter). A deadline already passed is
/// DEADLINE_EXCEEDED before anything is sent.
pub fn propagate(metadata: &mut MetadataMap) -> Result<(), Status> {
    let Some(deadline) = current() else {
        return Ok(());
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(Status::deadline_exceeded(
            "the caller's deadline passed before this service could call the next one; \
             retry with a longer timeout",
        ));
    }
    let own = metadata
        .get(GRPC_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    let timeout = own.map_or(remaining, |own| own.min(remaining));
    if let Ok(value) = grpc_timeout_value(timeout).parse() {
        metadata.insert(GRPC_TIMEOUT, value);
    }
    Ok(())
}

/// Runs every call inside the deadline its `grpc-timeout` header gives (see [`scope`]).
/// Tonic's server enforces the same header by dropping the call at that time; this layer makes
/// the deadline visible to the calls the handler makes in turn.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService { inner }
    }
}

/// See [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub struct DeadlineService<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for DeadlineService<S>
where
    S: Service<http::Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let deadline = request
            .headers()
            .get(GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .and_then(|timeout| Instant::now().checked_add(timeout));
        Box::pin(scope(deadline, self.inner.call(request)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_refuses_malformed_values() {
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("5M"), Some(Duration::from_secs(300)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "123456789S", "-1S", "1s", "1.5S", "1 S", "１S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_in_the_finest_unit_that_fits_and_never_longer() {
        assert_eq!(grpc_timeout_value(Duration::from_nanos(1500)), "1500n");
        assert_eq!(grpc_timeout_value(Duration::from_millis(2500)), "2500000u");
        assert_eq!(grpc_timeout_value(Duration::from_secs(30)), "30000000u");
        assert_eq!(grpc_timeout_value(Duration::from_secs(3000)), "3000000m");
        assert_eq!(grpc_timeout_value(Duration::from_secs(200_000)), "200000S");
        assert_eq!(grpc_timeout_value(Duration::MAX), "99999999H");
        for timeout in [
            Duration::from_nanos(123_456_789),
            Duration::from_secs(12_345_678),
        ] {
            let back = parse_grpc_timeout(&grpc_timeout_value(timeout)).unwrap();
            assert!(back <= timeout && back + Duration::from_millis(1) >= timeout);
        }
    }

    #[tokio::test]
    async fn outgoing_calls_carry_what_remains_of_the_deadline() {
        let mut outside = MetadataMap::new();
        propagate(&mut outside).unwrap();
        assert!(
            outside.get(GRPC_TIMEOUT).is_none(),
            "no deadline, no header"
        );

        let deadline = Instant::now() + Duration::from_secs(5);
        scope(Some(deadline), async {
            let mut metadata = MetadataMap::new();
            propagate(&mut metadata).unwrap();
            let sent =
                parse_grpc_timeout(metadata.get(GRPC_TIMEOUT).unwrap().to_str().unwrap()).unwrap();
            assert!(
                sent <= Duration::from_secs(5) && sent > Duration::from_secs(4),
                "{sent:?}"
            );
            // A shorter timeout of the call's own is kept.
            let mut own = MetadataMap::new();
            own.insert(GRPC_TIMEOUT, "100m".parse().unwrap());
            propagate(&mut own).unwrap();
            let kept = own.get(GRPC_TIMEOUT).unwrap().to_str().unwrap();
            assert_eq!(parse_grpc_timeout(kept), Some(Duration::from_millis(100)));
        })
        .await;

        let passed = Instant::now() - Duration::from_millis(1);
        let status = scope(Some(passed), async { propagate(&mut MetadataMap::new()) })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    }

    #[tokio::test]
    async fn the_layer_scopes_each_call_with_its_header() {
        let inner = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(current())
        });
        let mut service = DeadlineLayer.layer(inner);
        let request = http::Request::builder()
            .header(GRPC_TIMEOUT, "2S")
            .body(())
            .unwrap();
        let before = Instant::now();
        let seen = service.call(request).await.unwrap().expect("a deadline");
        assert!(seen >= before + Duration::from_secs(2));
        assert!(seen <= Instant::now() + Duration::from_secs(2));
        let plain = http::Request::builder().body(()).unwrap();
        assert_eq!(service.call(plain).await.unwrap(), None);
    }
}
