//! Who may call the admin API: the CA's own uid and root, identified by the kernel's peer
//! credentials on the Unix socket (SO_PEERCRED), never by anything the caller says.

use tonic::service::Interceptor;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Status};

/// The authenticated caller, put into each request's extensions by [`PeerCheck`]; the handlers
/// audit it. Only the interceptor makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(String);

/// The interceptor that checks each call's peer uid.
#[derive(Debug, Clone, Copy)]
pub struct PeerCheck {
    own_uid: u32,
}

// === impl Actor ===

impl Actor {
    /// `admin:uid=<uid>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// === impl PeerCheck ===

impl PeerCheck {
    /// Allows `own_uid` (the CA process's effective uid) and root.
    pub fn new(own_uid: u32) -> Self {
        Self { own_uid }
    }
}

impl Interceptor for PeerCheck {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let peer = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .map(|c| c.uid());
        let actor = check_peer_uid(self.own_uid, peer).inspect_err(|status| {
            tracing::warn!(peer.uid = ?peer, error = %status.message(), "admin api call refused");
        })?;
        request.extensions_mut().insert(actor);
        Ok(request)
    }
}

/// The access rule: `peer` (the caller's uid, if the kernel reported one) must be `own_uid` or 0.
pub fn check_peer_uid(own_uid: u32, peer: Option<u32>) -> Result<Actor, Status> {
    match peer {
        Some(uid) if uid == own_uid || uid == 0 => Ok(Actor(format!("admin:uid={uid}"))),
        Some(uid) => Err(Status::permission_denied(format!(
            "uid {uid} may not use the admin api (only uid {own_uid}, the ca's own user, and root may)"
        ))),
        None => Err(Status::permission_denied(
            "the caller's credentials are unknown (not a unix socket peer)",
        )),
    }
}

/// The caller recorded by [`PeerCheck`]; fails closed if the interceptor did not run.
pub(crate) fn actor<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .extensions()
        .get::<Actor>()
        .map(|a| a.as_str().to_owned())
        .ok_or_else(|| Status::permission_denied("the caller's credentials were not checked"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_uid_and_root_are_allowed_and_named_as_actor() {
        assert_eq!(
            check_peer_uid(1000, Some(1000)).unwrap().as_str(),
            "admin:uid=1000"
        );
        assert_eq!(
            check_peer_uid(1000, Some(0)).unwrap().as_str(),
            "admin:uid=0"
        );
    }

    #[test]
    fn other_uid_is_denied_by_name_and_unknown_peer_is_denied() {
        let err = check_peer_uid(1000, Some(1001)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        assert!(
            err.message()
                .starts_with("uid 1001 may not use the admin api"),
            "{}",
            err.message()
        );
        assert_eq!(
            check_peer_uid(1000, None).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
    }

    #[test]
    fn request_without_checked_actor_fails_closed() {
        let err = actor(&Request::new(())).unwrap_err();
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
        let mut req = Request::new(());
        assert!(
            PeerCheck::new(0).call(req).is_err(),
            "no connect info: denied"
        );
        req = Request::new(());
        req.extensions_mut().insert(Actor("admin:uid=0".into()));
        assert_eq!(actor(&req).unwrap(), "admin:uid=0");
    }
}
