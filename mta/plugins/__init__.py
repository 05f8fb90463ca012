"""mta.plugins - the plugin package: mta's own and third parties' plugins.

Any distribution may add modules to an ``mta/plugins/`` directory on
sys.path; twisted.plugin.getPlugins(Interface, mta.plugins) finds them all.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__ = []
