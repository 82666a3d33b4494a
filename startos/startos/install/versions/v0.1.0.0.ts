import { IMPOSSIBLE, VersionInfo } from '@start9labs/start-sdk'

// `upstream:downstream`: Arbiter's own version (pyproject.toml) and the package revision.
export const v_0_1_0_0 = VersionInfo.of({
  version: '0.1.0:0',
  releaseNotes: {
    en_US: 'First StartOS package of Arbiter.',
  },
  migrations: {
    up: async () => {},
    down: IMPOSSIBLE,
  },
})
