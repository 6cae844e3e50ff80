//! The REST facade of the original service (`/artifacts...` and
//! `/signing/public-key`): one entry point that parses the request into a
//! [`RestEndpoint`] (`endpoint`, the one route table), authorizes it on
//! what it resolves to (`access`: the decoded create body, the copy an id
//! names), calls the artifact or signing service (`handlers`) and maps
//! the answer through the dialect's one error table
//! (`http::error::rest`; `response` holds the success bodies).
//!
//! The auth middleware only authenticates REST requests (401/429 for bad
//! credentials) and leaves the [`Caller`](super::auth::Caller) in the
//! request extensions; every authorization decision is made here.

pub(crate) mod access;
pub mod endpoint;
pub mod fleet_endpoint;
pub(crate) mod fleet_handlers;
mod handlers;
pub(crate) mod response;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};

use super::error::RestError;
use super::{auth, AppState};
use crate::artifacts::ArtifactError;
use crate::auth::Action;
use access::Access;
use endpoint::{FleetNeeds, Needs, RestEndpoint};
use response::named;

/// Every REST route: parse, authorize, handle.
pub async fn dispatch(State(state): State<AppState>, req: Request) -> Response {
    let ep = match RestEndpoint::parse(req.method(), req.uri().path(), req.uri().query()) {
        Ok(ep) => ep,
        Err(e) => {
            let r = RestError::of_route(e, req.method().as_str(), req.uri().path());
            return named("rest", r.into_response());
        }
    };
    let route = ep.route();
    let template = super::metrics::RouteTemplate::of_rest(&ep);
    let caller = req.extensions().get::<auth::Caller>().cloned();
    let access = Access::new(caller.as_ref());
    // What the endpoint needs, checked before any body is read; a create
    // is checked again on the repository its decoded body writes.
    let copy = match ep.needs() {
        Needs::Open => Ok(None),
        Needs::ListPull => access.check_list().map(|()| None),
        Needs::PushOnBody => access.check_create().map(|()| None),
        Needs::OnCopy(id, action) => match state.artifacts.copies(&id.digest).await {
            Ok(copies) => access.resolve_copy(copies, id, action).map(Some),
            Err(e) => return named(route, e.into_response()),
        },
        Needs::Fleet(FleetNeeds::HostList) => access.check_host_list().map(|()| None),
        Needs::Fleet(FleetNeeds::Repo(repo, action)) => {
            access.check_repo(repo, action).map(|()| None)
        }
        // The host first, on its id alone; then the artifact's copy.
        Needs::Fleet(FleetNeeds::Host(host, action, id)) => match access.check_host(host, action) {
            Err(refused) => Err(refused),
            Ok(()) => match id {
                None => Ok(None),
                Some(id) => match state.artifacts.copies(&id.digest).await {
                    Ok(copies) => access.resolve_copy(copies, id, Action::Pull).map(Some),
                    Err(e) => return named(route, e.into_response()),
                },
            },
        },
    };
    let copy = match copy {
        Ok(c) => c,
        Err(refusal) => {
            let r = handlers::refuse(req, refusal.into_response()).await;
            return template.on(named(route, r));
        }
    };
    // Each handler's future on the heap: a request (a held long-poll
    // especially) keeps only the future of its own handler, not space for
    // the largest of them.
    let r = match (ep, copy) {
        (RestEndpoint::List { query }, _) => Box::pin(handlers::list(&state, access, &query)).await,
        (RestEndpoint::ForHost { host, wait }, _) => {
            Box::pin(fleet_handlers::for_host(&state, access, &host, wait, req)).await
        }
        (RestEndpoint::Fleet(ep), copy) => {
            Box::pin(fleet_handlers::fleet(&state, access, ep, copy, req)).await
        }
        (RestEndpoint::Create, _) => Box::pin(handlers::create(&state, access, req)).await,
        (RestEndpoint::PublicKey { version }, _) => {
            Box::pin(handlers::public_key(&state, version)).await
        }
        (RestEndpoint::Artifact { op, .. }, Some(copy)) => {
            Box::pin(handlers::artifact(&state, &copy.key(), op, req)).await
        }
        (RestEndpoint::Artifact { .. }, None) => {
            ArtifactError::Internal("an id endpoint without its resolved copy".into())
                .into_response()
        }
    };
    template.on(named(route, r))
}
