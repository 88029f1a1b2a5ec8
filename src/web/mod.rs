//! The HTTP application: the browser page's files, health, and the realtime endpoint.

use std::path::Path;

use actix_web::web::{self, ServiceConfig};
use actix_web::HttpResponse;

use crate::engineio::Engine;

/// Mounts voxio's routes: `/socket.io/` (the realtime endpoint), `/healthz`, and the page.
pub fn configure<'a>(
    engine: &'a Engine,
    static_dir: &'a Path,
) -> impl FnOnce(&mut ServiceConfig) + 'a {
    move |cfg| {
        cfg.service(engine.resource("/socket.io/"))
            .route("/healthz", web::get().to(healthz))
            .service(actix_files::Files::new("/", static_dir).index_file("index.html"));
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("ok")
}
