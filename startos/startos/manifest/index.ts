import { setupManifest } from '@start9labs/start-sdk'
import { projectUrl } from '../utils'
import { long, short } from './i18n'

// Every image is built or pulled for exactly these architectures; the Makefile's
// ARCHES builds the same set (tests/ship/test_startos_package.py compares them).
const arches = ['x86_64', 'aarch64'] as const

export const manifest = setupManifest({
  id: 'arbiter',
  title: 'Arbiter',
  license: 'MIT',
  packageRepo: `${projectUrl}/tree/main/startos`,
  upstreamRepo: projectUrl,
  marketingUrl: projectUrl,
  donationUrl: null,
  description: { short, long },
  volumes: ['main'],
  images: {
    // Arbiter itself: startos/Dockerfile, built with the repository root as context.
    arbiter: {
      source: { dockerBuild: { workdir: '..', dockerfile: 'Dockerfile' } },
      arch: [...arches],
    },
    // The channel layer and task queue shared by the web and worker processes.
    redis: {
      source: { dockerTag: 'redis:7.4-alpine' },
      arch: [...arches],
    },
  },
  dependencies: {},
})
