import { actions } from '../actions'
import { restoreInit } from '../backups'
import { setDependencies } from '../dependencies'
import { versionGraph } from '../install/versionGraph'
import { setInterfaces } from '../interfaces'
import { sdk } from '../sdk'
import { configureTask } from './configureTask'
import { seedFiles } from './seedFiles'

export const init = sdk.setupInit(
  restoreInit,
  versionGraph,
  setInterfaces,
  setDependencies,
  actions,
  seedFiles,
  configureTask,
)

export const uninit = sdk.setupUninit(versionGraph)
