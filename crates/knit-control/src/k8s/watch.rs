//! The I/O half of the Kubernetes source: one `kube::runtime::watcher` per kind, merged into a
//! single stream so that one task feeds the [`Translator`] in the order events arrive.
//!
//! A watch that fails logs once at warn (a custom resource's most likely cause being a CRD that
//! is not installed) and retries with kube's default backoff; the other watches carry on. A 404
//! on a custom resource's collection means its CRD is missing, which the translator takes as an
//! empty listing, so readiness does not wait for CRDs a cluster does not have.

use super::{Input, Status, Translator, Watched};
use crate::index::Index;
use futures_util::{stream::BoxStream, StreamExt};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    api::{Api, DynamicObject},
    runtime::{watcher, watcher::Event, WatchStreamExt},
    Client,
};
use std::{collections::BTreeSet, sync::Arc};

/// Watches every kind of `status` until the task is dropped, feeding the index. Never returns: a
/// watch that fails retries with kube's default backoff without holding up the others.
pub async fn run(client: Client, index: Arc<Index>, status: Status) {
    let kinds = status.0.kinds;
    let mut translator = Translator::new(index, status.clone());
    let mut events = futures_util::stream::select_all(kinds.iter().map(|kind| watch(client.clone(), *kind)));
    let mut failing = BTreeSet::new();
    while let Some((kind, result)) = events.next().await {
        match result {
            Ok(input) => {
                if failing.remove(&kind) {
                    tracing::info!(kind = kind.source(), "watch recovered");
                    status.set_failing(kind, None);
                }
                translator.handle(input);
            }
            Err(e) => {
                let missing = kind.custom().is_some() && not_found(&e);
                if missing {
                    translator.missing(kind);
                } else {
                    status.set_failing(kind, Some(e.to_string()));
                }
                // Once per outage at warn: the backoff retries for as long as it lasts.
                if failing.insert(kind) {
                    let hint = if kind.custom().is_some() { "is the CRD installed? " } else { "" };
                    tracing::warn!(kind = kind.source(), error = %e, "watch failed; {hint}retrying with backoff");
                } else {
                    tracing::debug!(kind = kind.source(), error = %e, "watch still failing");
                }
            }
        }
    }
}

type Watch = BoxStream<'static, (Watched, Result<Input, watcher::Error>)>;

fn watch(client: Client, kind: Watched) -> Watch {
    fn stream<K>(api: Api<K>, kind: Watched, wrap: impl Fn(Event<K>) -> Input + Send + 'static) -> Watch
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        watcher(api, watcher::Config::default()).default_backoff().map(move |r| (kind, r.map(&wrap))).boxed()
    }
    match (kind, kind.api_resource()) {
        (Watched::Namespace, _) => stream(Api::<Namespace>::all(client), kind, Input::Namespace),
        (Watched::Service, _) => stream(Api::<Service>::all(client), kind, Input::Service),
        (Watched::Pod, _) => stream(Api::<Pod>::all(client), kind, Input::Pod),
        (Watched::EndpointSlice, _) => stream(Api::<EndpointSlice>::all(client), kind, Input::EndpointSlice),
        (_, Some(ar)) => stream(Api::<DynamicObject>::all_with(client, &ar), kind, move |e| Input::Custom(kind, e)),
        // Every kind but the four built-in ones has an ApiResource.
        (_, None) => futures_util::stream::empty().boxed(),
    }
}

/// The list or watch was answered 404: the resource type does not exist.
fn not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s)) | watcher::Error::WatchStartFailed(kube::Error::Api(s)) => s.is_not_found(),
        _ => false,
    }
}
