//! The OpenAPI spec (D-008), generated from the handlers' annotations and
//! the DTO types. `docs/openapi.json` is this spec, committed; a test fails
//! when they differ (regenerate with `UPDATE_OPENAPI=1 cargo test -p relay --test openapi`).

use crate::release::{admin, public};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct AdminTokenScheme;

impl Modify for AdminTokenScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Progress relay: release registry",
        description = "Admin lifecycle of dataset releases (create, attach, validate, publish, roll out, deprecate, audit) and the public endpoints devices use (latest, manifest, artifacts). The sync protocol runs over WebSocket at /sync and is described in docs/sync-contract.md."
    ),
    paths(
        admin::create, admin::list, admin::show, admin::update, admin::upload, admin::attach_external,
        admin::remove_artifact, admin::validate, admin::publish, admin::rollout, admin::deprecate,
        admin::set_dataset, admin::audit_log,
        public::latest, public::manifest, public::artifact,
    ),
    modifiers(&AdminTokenScheme),
    tags(
        (name = "admin", description = "Requires an admin token; every call is audit-logged."),
        (name = "public", description = "What devices call; no token."),
    )
)]
pub struct ApiDoc;

pub fn spec() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
