//! The HTTP route table: every (method, path, handler) the server answers. [`super::router`]
//! builds the router from it, and `tests/it/openapi.rs` checks that each entry has an operation in
//! the OpenAPI document (and each operation a route), so a route cannot ship undocumented.

use super::{api, AppState};
use axum::http::Method;
use axum::routing::{on, MethodFilter, MethodRouter};
use std::sync::Arc;

/// One route: a method on a path (axum's `{param}` syntax, which is also OpenAPI's).
pub struct Route {
    method: Method,
    path: &'static str,
    handler: MethodRouter<Arc<AppState>>,
}

impl Route {
    pub fn method(&self) -> &Method {
        &self.method
    }
    pub fn path(&self) -> &'static str {
        self.path
    }
    pub(super) fn into_parts(self) -> (&'static str, MethodRouter<Arc<AppState>>) {
        (self.path, self.handler)
    }
}

/// The method is written once, so the table cannot say GET while the router answers POST.
macro_rules! route {
    ($m:ident $path:literal => $h:path) => {
        Route {
            method: Method::$m,
            path: $path,
            handler: on(MethodFilter::$m, $h),
        }
    };
}

/// Every route, in the order the README lists them.
pub fn table() -> Vec<Route> {
    vec![
        route!(GET "/" => api::page),
        route!(GET "/openapi.json" => api::openapi),
        route!(POST "/index" => api::index),
        route!(GET "/search" => api::search),
        route!(POST "/search" => api::search_by_example),
        route!(GET "/videos/{task}/{id}" => api::get_video),
        route!(DELETE "/videos/{task}/{id}" => api::delete_video),
        route!(GET "/videos/{task}/{id}/thumbnail.jpg" => api::thumbnail),
        route!(GET "/videos/{task}/{id}/video" => api::video),
        route!(GET "/tasks" => api::tasks),
        route!(GET "/tasks/{task}" => api::task),
        route!(GET "/healthz" => api::healthz),
        route!(GET "/readyz" => api::readyz),
        route!(GET "/metrics" => api::metrics),
    ]
}
