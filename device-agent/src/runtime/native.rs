//! The native adapter: `compose` deployments through [`ComposeRuntime`],
//! `helm.v3` deployments through [`HelmRuntime`], chosen by profile type.
//! It advertises the profiles whose tool is available.

use margo_schemas::deployment::{ApplicationDeployment, Component, ProfileType};

use super::{
    ApplyKind, ComposeRuntime, HelmRuntime, Runtime, RuntimeError, RuntimeFuture, RuntimeInfo,
};

/// Dispatches each deployment to the adapter for its profile type.
#[derive(Debug)]
pub struct NativeRuntime {
    compose: ComposeRuntime,
    helm: HelmRuntime,
}

impl NativeRuntime {
    pub fn new(compose: ComposeRuntime, helm: HelmRuntime) -> Self {
        Self { compose, helm }
    }

    fn for_profile(&self, profile: ProfileType) -> &dyn Runtime {
        match profile {
            ProfileType::Compose => &self.compose,
            ProfileType::HelmV3 => &self.helm,
        }
    }
}

impl Runtime for NativeRuntime {
    fn supported(&self) -> RuntimeInfo {
        let mut profiles = self.compose.supported().profiles;
        profiles.extend(self.helm.supported().profiles);
        RuntimeInfo {
            name: "native",
            profiles,
        }
    }

    fn check_profile(&self, profile: ProfileType) -> Result<(), RuntimeError> {
        self.for_profile(profile).check_profile(profile)
    }

    fn apply<'a>(
        &'a self,
        deployment: &'a ApplicationDeployment,
        component: &'a Component,
        kind: ApplyKind,
    ) -> RuntimeFuture<'a> {
        self.for_profile(deployment.profile)
            .apply(deployment, component, kind)
    }

    fn remove<'a>(
        &'a self,
        deployment: &'a ApplicationDeployment,
        component: &'a Component,
    ) -> RuntimeFuture<'a> {
        self.for_profile(deployment.profile)
            .remove(deployment, component)
    }
}
