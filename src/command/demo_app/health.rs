//! The demo app's gRPC service: the standard health checking protocol (`grpc.health.v1.Health`),
//! what Kubernetes' gRPC probes and `grpc_health_probe` call. It gives the mesh a real gRPC
//! service to carry end to end: a unary call (`Check`) and a server stream (`Watch`).
//!
//! The app knows two services: `""` (the server as a whole) and its own name; both are always
//! SERVING. `Check` of any other is NOT_FOUND; `Watch` of any other sends SERVICE_UNKNOWN (as the
//! protocol says). A demo app's status never changes, so `Watch` sends the status once and then
//! keeps the stream open until the caller ends it.

use std::pin::Pin;

use futures::{Stream, StreamExt as _, stream};
use tonic::{Request, Response, Status};
use warden_api::health::health_check_response::ServingStatus;
use warden_api::health::health_server::{Health, HealthServer};
use warden_api::health::{HealthCheckRequest, HealthCheckResponse};

/// The health service of a demo app called `name`.
#[derive(Debug, Clone)]
pub(super) struct DemoHealth {
    name: String,
}

impl DemoHealth {
    pub(super) fn server(name: &str) -> HealthServer<Self> {
        HealthServer::new(Self {
            name: name.to_owned(),
        })
    }

    fn knows(&self, service: &str) -> bool {
        service.is_empty() || service == self.name
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status.into(),
    }
}

#[tonic::async_trait]
impl Health for DemoHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = &request.get_ref().service;
        if !self.knows(service) {
            return Err(Status::not_found(format!("unknown service `{service}`")));
        }
        Ok(Response::new(response(ServingStatus::Serving)))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let status = if self.knows(&request.get_ref().service) {
            ServingStatus::Serving
        } else {
            ServingStatus::ServiceUnknown
        };
        let now = stream::once(async move { Ok(response(status)) });
        Ok(Response::new(Box::pin(now.chain(stream::pending()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn check_knows_the_server_and_the_app_and_nothing_else() {
        let h = DemoHealth {
            name: "api".to_owned(),
        };
        for known in ["", "api"] {
            let r = h
                .check(Request::new(HealthCheckRequest {
                    service: known.to_owned(),
                }))
                .await
                .unwrap();
            assert_eq!(r.get_ref().status(), ServingStatus::Serving, "{known:?}");
        }
        let e = h
            .check(Request::new(HealthCheckRequest {
                service: "billing".to_owned(),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(e.message().contains("billing"), "{}", e.message());
    }

    #[tokio::test]
    async fn watch_sends_the_status_then_stays_open() {
        let h = DemoHealth {
            name: "api".to_owned(),
        };
        for (service, want) in [
            ("api", ServingStatus::Serving),
            ("billing", ServingStatus::ServiceUnknown),
        ] {
            let mut s = h
                .watch(Request::new(HealthCheckRequest {
                    service: service.to_owned(),
                }))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(s.next().await.unwrap().unwrap().status(), want);
            let more = tokio::time::timeout(std::time::Duration::from_millis(50), s.next()).await;
            assert!(more.is_err(), "the stream ended or sent again: {more:?}");
        }
    }
}
